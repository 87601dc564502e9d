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
        from llamaport.errors import LlamaportError

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


def _sampling(max_new_tokens, temperature, top_p, top_k, seed, **extra):
    from llamaport.runtime import SamplingParams

    try:
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                              seed=seed, **extra)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def sampling_options(fn):
    for option in reversed([
        click.option("--max-new-tokens", default=128, show_default=True, help="Tokens to generate at most."),
        click.option("--temperature", default=0.0, show_default=True, help="0 = greedy."),
        click.option("--top-p", default=1.0, show_default=True),
        click.option("--top-k", default=0, show_default=True, help="0 = off."),
        click.option("--seed", type=int, default=None, help="Seed for sampling."),
    ]):
        fn = option(fn)
    return fn


def backend_options(fn):
    fn = click.option("--backend", default="auto", show_default=True, help="auto, onnxruntime, tensorrt or eager.")(fn)
    fn = click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")(fn)
    return click.option("--threads", type=int, default=None, help="CPU threads (default: physical cores).")(fn)


@main.command()
@click.argument("engine_dir", type=click.Path())
@click.option("-p", "--prompt", required=True, help="Prompt text.")
@sampling_options
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--truncate", is_flag=True, help="Keep the end of a prompt longer than the engine's max_seq.")
@click.option("--json", "as_json", is_flag=True, help="Print {text, token_ids, finish_reason, timings} as JSON.")
@backend_options
@user_errors
def generate(engine_dir, prompt, max_new_tokens, temperature, top_p, top_k, seed, chat, truncate, as_json,
             backend, device, threads):
    """Generate a completion of PROMPT with ENGINE_DIR (streams to the terminal unless --json)."""
    from llamaport.runtime import Engine

    engine = Engine.open(engine_dir, backend=backend, device=device, threads=threads)
    params = _sampling(max_new_tokens, temperature, top_p, top_k, seed)
    if as_json:
        out = engine.generate(prompt, params, chat=chat, truncate=truncate)
        click.echo(json.dumps({"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
                               "timings": out.timings}))
        return
    for piece in engine.stream(prompt, params, chat=chat, truncate=truncate):
        click.echo(piece, nl=False)
    click.echo()


@main.command()
@click.argument("engine_dir", type=click.Path())
@click.option("--system", default=None, help="System prompt.")
@sampling_options
@backend_options
@user_errors
def chat(engine_dir, system, max_new_tokens, temperature, top_p, top_k, seed, backend, device, threads):
    """Chat with ENGINE_DIR interactively (streaming). Ctrl-D or Ctrl-C ends; /reset forgets the conversation.

    Old turns are dropped when the conversation no longer fits the engine's cache.
    """
    from llamaport.runtime.interactive import chat_loop

    from llamaport.runtime import Engine

    engine = Engine.open(engine_dir, backend=backend, device=device, threads=threads)
    chat_loop(engine, _sampling(max_new_tokens, temperature, top_p, top_k, seed), system)


@main.command()
@click.argument("engine_dir", type=click.Path())
@click.option("--reference", type=click.Path(), default=None, help="Checkpoint to compare with (default: the export's source).")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True), default=None, help="One prompt per line.")
@click.option("--text", "text_file", type=click.Path(exists=True), default=None, help="Text for the perplexity check.")
@click.option("--greedy-tokens", default=16, show_default=True, help="Greedy tokens compared per prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@user_errors
def check(engine_dir, reference, prompts_file, text_file, greedy_tokens, as_json):
    """Compare ENGINE_DIR with the eager PyTorch model; exit 1 when any threshold fails."""
    from pathlib import Path

    from llamaport.errors import LlamaportError
    from llamaport.runtime import Engine
    from llamaport.runtime.check import run_check

    engine = Engine.open(engine_dir)
    source = reference or engine.manifest.get("source")
    if not source or not Path(source).exists():
        raise LlamaportError(f"the export's source {source!r} is not here; pass --reference CHECKPOINT")
    ref = Engine.open(source, backend="eager", max_seq=engine.max_seq)
    prompts = Path(prompts_file).read_text().splitlines() if prompts_file else None
    text = Path(text_file).read_text() if text_file else None
    report = run_check(engine, ref, [p for p in prompts or [] if p.strip()] or None, text, greedy_tokens,
                       engine.manifest["dtype"])
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"{'prompt':42} {'max|d|':>9} {'cos':>9} {'KL':>9} {'top1':>5} {'top5':>5} {'greedy':>6}")
        for r in report["prompts"]:
            click.echo(f"{r['prompt'][:40]!r:42} {r['max_abs_diff']:9.2e} {r['cosine']:9.6f} {r['kl']:9.2e} "
                       f"{r['top1']:5.2f} {r['top5']:5.2f} {r['greedy_match']:6.2f}")
        ppl = report["perplexity"]
        click.echo(f"perplexity: eager {ppl['reference']:.4f}, engine {ppl['engine']:.4f} ({ppl['tokens']} tokens)")
        click.echo("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
    if not report["passed"]:
        sys.exit(1)


@main.command()
@click.argument("engine_dir", type=click.Path())
@click.option("--prompt-len", default=128, show_default=True)
@click.option("--new-tokens", default=128, show_default=True)
@click.option("--batch", default=1, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@backend_options
@user_errors
def bench(engine_dir, prompt_len, new_tokens, batch, repeats, as_json, backend, device, threads):
    """Measure prefill/decode tokens/s, time to first token, peak RSS and % of the read-bandwidth roofline."""
    from pathlib import Path

    from llamaport.runtime import Engine
    from llamaport.runtime.bench import run_bench

    engine = Engine.open(engine_dir, backend=backend, device=device, threads=threads)
    report = run_bench(engine, Path(engine_dir), prompt_len, new_tokens, batch, repeats, threads)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(
        f"prefill {report['prefill_tokens_per_s']:.0f} tok/s (TTFT {report['time_to_first_token_s'] * 1000:.0f} ms), "
        f"decode {report['decode_tokens_per_s']:.1f} tok/s = {report['roofline_percent']:.0f}% of the "
        f"{report['measured_read_bandwidth_gb_s']:.1f} GB/s read roofline ({report['roofline_decode_tokens_per_s']:.0f} tok/s); "
        f"peak RSS {report['peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
