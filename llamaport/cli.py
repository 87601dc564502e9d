"""The `llamaport` command line. Each subcommand's help is its docstring; heavy imports happen inside commands."""

from __future__ import annotations

import functools
import json
import sys

import click


def user_errors(fn):
    """Print a LlamaportError as one line on stderr and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from llamaport.models.errors import LlamaportError

        try:
            return fn(*args, **kwargs)
        except LlamaportError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llamaport")
def main():
    """Take Llama-family models from PyTorch to ONNX/TensorRT engines and run them."""


@main.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Folder to write (must not exist).")
@click.option("--dtype", default="fp32", show_default=True, help="Weight dtype: fp32, fp16 or bf16.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (only once the new one is complete).")
@user_errors
def convert(src, out, dtype, overwrite):
    """Convert SRC (Hugging Face folder, Meta folder, or .gguf) to a Hugging Face folder.

    Writes config.json, model.safetensors and the tokenizer files. A GGUF that holds only a vocabulary converts
    to just the tokenizer files. OUT is written atomically: on any error nothing is left behind.
    """
    from llamaport.models import read_checkpoint
    from llamaport.models.hf_writer import parse_dtype, write_hf_folder

    checkpoint = read_checkpoint(src)
    write_hf_folder(checkpoint, out, parse_dtype(dtype), overwrite=overwrite)
    what = "tokenizer files" if checkpoint.config is None else "model and tokenizer files"
    click.echo(f"wrote {what} to {out}")


@main.command()
@click.argument("src", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@user_errors
def info(src, as_json):
    """Print the config, parameter count, stored dtype and tokenizer kind of SRC."""
    from llamaport.models import read_checkpoint
    from llamaport.models.stats import parameter_count

    checkpoint = read_checkpoint(src)
    config = checkpoint.config
    report = {
        "source": str(checkpoint.source),
        "format": checkpoint.format,
        "stored_dtype": checkpoint.stored_dtype,
        "tokenizer": checkpoint.tokenizer_kind,
        "parameters": parameter_count(config) if config else 0,
        "config": config.to_hf_dict() if config else None,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"source:     {report['source']} ({report['format']})")
    click.echo(f"tokenizer:  {report['tokenizer'] or 'none'}")
    if config is None:
        click.echo("weights:    none (vocabulary only)")
        return
    click.echo(f"parameters: {report['parameters']:,}")
    click.echo(f"dtype:      {report['stored_dtype']}")
    attention = "MHA" if config.num_query_groups == 1 else "MQA" if config.num_key_value_heads == 1 else "GQA"
    click.echo(
        f"layers {config.num_hidden_layers}, hidden {config.hidden_size}, ffn {config.intermediate_size}, "
        f"heads {config.num_attention_heads}/{config.num_key_value_heads} ({attention}), head_dim {config.head_dim}, "
        f"vocab {config.vocab_size}"
    )
    click.echo(
        f"rope: {config.rope_type}, theta {config.rope_theta:g}; context {config.max_position_embeddings}; "
        f"tied embeddings: {config.tie_word_embeddings}"
    )


@main.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Engine directory to write.")
@click.option("--target", default="onnx", show_default=True,
              help="onnx (standard ops, opset 24), ort (ONNX Runtime fused ops) or trt (TensorRT plugin nodes).")
@click.option("--dtype", default="fp32", show_default=True, help="Graph dtype: fp32, fp16 or bf16.")
@click.option("--max-seq", default=4096, show_default=True, help="KV-cache capacity (prompt + generated tokens).")
@click.option("--max-batch", default=1, show_default=True, help="Largest batch the engine will run.")
@click.option("--logits", type=click.Choice(["last", "all"]), default="last", show_default=True,
              help="Logits for each row's last token, or for every position.")
@click.option("--task", default="causal-lm", show_default=True, help="causal-lm or sequence-classification.")
@click.option("--skip-verify", is_flag=True, help="Do not run the graph against the eager model (huge models).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (only once the new one is complete).")
@user_errors
def export(src, out, target, dtype, max_seq, max_batch, logits, task, skip_verify, overwrite):
    """Export SRC (HF folder, Meta folder or .gguf) to an engine directory OUT.

    OUT holds model.onnx (+ model.onnx.data), the tokenizer files and manifest.json. The graph is run against
    the eager PyTorch model on a prefill and decode steps; the export fails, leaving nothing, beyond tolerance.
    """
    from llamaport.exporter import ExportOptions, export_engine

    options = ExportOptions(target=target, dtype=dtype, max_seq=max_seq, max_batch=max_batch, logits=logits,
                            task=task, verify=not skip_verify, overwrite=overwrite)
    manifest = export_engine(src, out, options)
    accuracy = manifest["verification"]
    checked = (
        f"verified on {accuracy['backend']}: max |logit diff| {accuracy['max_abs_logit_diff']:.2e}, "
        f"top-1 agreement {accuracy['top1_agreement']:.3f}" if accuracy else "not verified"
    )
    click.echo(f"wrote {target} engine ({dtype}, max_seq {max_seq}) to {out}; {checked}")


if __name__ == "__main__":
    main()
