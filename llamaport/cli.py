"""The `llamaport` command line. Each subcommand's help is its docstring; heavy imports happen inside commands."""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys

import click

from llamaport.enginedir import BackendName, CosineOf, DType, LogitsMode, Target, Task  # light: no torch, no onnx


def _one_of(kind) -> str:
    """'a, b or c' from an enginedir name type, for help texts."""
    names = kind.choices()
    return ", ".join(names[:-1]) + " or " + names[-1]


def user_errors(fn):
    """Print a LlamaportError as one line on stderr and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from llamaport.errors import LlamaportError

        # Values that parse but are out of range (--temperature nan, --threads 0) exit 1 with one `error:` line,
        # as the README promises, whether the CLI or the API found them. Text that does not parse at all
        # (--top-k abc, a missing argument) stays click's usage error, exit 2 with the usage line: that is the
        # Unix convention for a malformed command line, and the usage line is the useful answer there.
        try:
            return fn(*args, **kwargs)
        except LlamaportError as e:
            # runtime.validate.InvalidValue rewords itself with the flag's name (not imported here: it would
            # import the runtime for every command)
            click.echo(f"error: {e.as_flag() if hasattr(e, 'as_flag') else e}", err=True)
            sys.exit(getattr(e, "exit_code", 1))  # errors.MissingDependency: 2

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
    from llamaport.atomic import check_output
    from llamaport.models import read_checkpoint
    from llamaport.models.hf_writer import parse_dtype, write_hf_folder

    check_output(out, overwrite, sources=[src])  # before loading anything: never after minutes of work
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
    if config.defaulted_note():
        click.echo(f"note: {config.defaulted_note()}")


@main.command()
@click.argument("src", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Engine directory to write.")
# --target/--dtype/--task are checked by enginedir.parse (exit 1 with one error line naming the choices), not by
# click.Choice, which exits 2 with a usage message; the help texts are generated from the same enums.
@click.option("--target", default=Target.ONNX.value, show_default=True,
              help="onnx (standard ops, opset 24), ort (ONNX Runtime fused ops), trt (TensorRT plugin nodes) or "
                   "trt-native (TensorRT 11's own attention and KV-cache-update ops).")
@click.option("--dtype", default=DType.FP32.value, show_default=True, help=f"Graph dtype: {_one_of(DType)}.")
@click.option("--max-seq", type=int, default=None,
              help="KV-cache capacity (prompt + generated tokens). Default: 4096, or what the model supports "
                   "if fewer.")
@click.option("--max-batch", default=1, show_default=True, help="Largest batch the engine will run.")
@click.option("--logits", type=click.Choice(LogitsMode.choices()), default=LogitsMode.LAST.value, show_default=True,
              help="Logits for each row's last token, or for every position.")
@click.option("--task", default=Task.CAUSAL_LM.value, show_default=True, help=f"{_one_of(Task)}.")
@click.option("--skip-verify", is_flag=True, help="Do not run the graph against the eager model (huge models).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (only once the new one is complete).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--quant", type=click.Choice(["none", "int4"]), default="none", show_default=True,
              help="Weight-only quantization of the linear layers.")
@click.option("--method", default="rtn", show_default=True,
              help="int4 method: rtn, gptq (calibrated) or gguf (carry a Q4_0/Q4_1 GGUF's own codes).")
@click.option("--group-size", type=int, default=None,
              help="int4 block size along K: 32, 64 or 128 (default: the largest that divides every layer).")
@click.option("--lm-head", default="int8", show_default=True, help="LM head and embedding: int8, int4 or none.")
@click.option("--calib", type=click.Path(), default=None, help="Calibration text for gptq (default: built in).")
@click.option("--symmetric/--asymmetric", default=None,
              help="int4 codes without zero points (TensorRT's form) or with them. Default: asymmetric for ort and "
                   "onnx, symmetric for trt.")
@click.option("--exact-int4", is_flag=True,
              help="ort: fp32 activations in MatMulNBits (accuracy_level 0) instead of the faster int8 ones.")
@user_errors
def export(src, out, target, dtype, max_seq, max_batch, logits, task, skip_verify, overwrite, quiet, quant, method,
           group_size, lm_head, calib, symmetric, exact_int4):
    """Export SRC (HF folder, Meta folder or .gguf) to an engine directory OUT.

    OUT holds model.onnx (+ model.onnx.data), the tokenizer files and manifest.json. The graph is run against
    the eager PyTorch model on a prefill and decode steps; the export fails, leaving nothing, beyond tolerance.
    """
    from llamaport.atomic import check_output
    from llamaport.export_options import check_export_request, resolve_max_seq

    # Options, source and output checked before torch loads: a typo costs nothing.
    max_seq, note = check_export_request(src, target=target, dtype=dtype, max_seq=max_seq, max_batch=max_batch,
                                         logits=logits, task=task)
    check_output(out, overwrite, sources=[src])
    from llamaport.exporter import ExportOptions, export_engine

    if max_seq is None:  # GGUF / Meta: their config comes from loaders that import torch
        from llamaport.models import read_checkpoint

        checkpoint = read_checkpoint(src)
        checkpoint.require_weights()
        max_seq, note = resolve_max_seq(None, checkpoint.config)
    if note:
        click.echo(note, err=True)
    spec = None
    if quant == "int4":
        from llamaport.exporter.quant import parse_spec

        spec = parse_spec(method, group_size, lm_head, symmetric, calib=calib, exact=exact_int4)
    options = ExportOptions(target=target, dtype=dtype, max_seq=max_seq, max_batch=max_batch, logits=logits,
                            task=task, verify=not skip_verify, overwrite=overwrite, quiet=quiet, quant=spec)
    manifest = export_engine(src, out, options)
    accuracy = manifest["verification"]
    checked = (
        f"verified on {accuracy['backend']}: max |logit diff| {accuracy['max_abs_logit_diff']:.2e}, "
        f"top-1 agreement {accuracy['top1_agreement']:.3f}" if accuracy else "not verified"
    )
    weights = "" if spec is None else f", int4 {manifest['quantization']['method']} g{manifest['quantization']['group_size']}"
    click.echo(f"wrote {target} engine ({dtype}{weights}, max_seq {max_seq}) to {out}; {checked}")
    quality = (manifest.get("quantization") or {}).get("quality") or {}
    if quality.get("measured"):
        click.echo(f"int4 weights vs the checkpoint's ({quality['text_tokens']} tokens of check's text): perplexity "
                   f"{quality['perplexity_reference']:.3f} -> {quality['perplexity_quantized']:.3f}, KL "
                   f"{quality['kl']:.4f}, top-1 agreement {quality['top1_agreement']:.3f}")
    if not manifest.get("tokenizer"):
        click.echo(f"note: {src} has no tokenizer files (tokenizer.json or tokenizer.model), so neither has the "
                   "engine: give prompts as token ids (generate --prompt-ids 1,2,3, or ids in the Python API), or "
                   "put the tokenizer files beside the checkpoint and export again", err=True)


@main.command()
@click.argument("export_dir", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Engine directory to write.")
@click.option("--plugins", default="llamaport", show_default=True,
              help="llamaport (our plugins; exports made with --target trt) or native (TensorRT 11's own attention "
                   "and KV-cache ops; exports made with --target trt-native).")
@click.option("--timing-cache", type=click.Path(), default=None,
              help="TensorRT tactic timing cache file: read if present, updated after the build.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (only once the new one is complete).")
@click.option("--json", "as_json", is_flag=True, help="Print the build record (versions, GPU, profiles) as JSON.")
@user_errors
def build(export_dir, out, plugins, timing_cache, overwrite, as_json):
    """Build a TensorRT engine from EXPORT_DIR (exported with --target trt or trt-native) into OUT.

    OUT is EXPORT_DIR plus model.engine, its manifest extended with the TensorRT version, GPU compute capability,
    plugin version and build options. Needs TensorRT and an NVIDIA GPU (exit status 2 without TensorRT).
    """
    from llamaport.atomic import check_output
    from llamaport.plugins.trt_build import BuildOptions, build_engine

    check_output(out, overwrite, sources=[export_dir])
    manifest = build_engine(export_dir, out, BuildOptions(plugins=plugins, timing_cache=timing_cache,
                                                          overwrite=overwrite))
    record = manifest["tensorrt"]
    if as_json:
        click.echo(json.dumps({"output": str(out), **record}, indent=2))
        return
    click.echo(f"wrote TensorRT {record['tensorrt_version']} engine (sm {record['compute_capability']}, "
               f"{record['build_options']['weights']}, plugins {record['plugins']}) to {out}")


def _sampling(max_new_tokens, temperature, top_p, top_k, seed, **extra):
    from llamaport.runtime import SamplingParams

    # An invalid value raises runtime.validate.InvalidValue, which user_errors prints naming the flag.
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          seed=seed, **extra)


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
    fn = click.option("--backend", default=BackendName.AUTO.value, show_default=True, help=f"{_one_of(BackendName)}.")(fn)
    fn = click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")(fn)
    from llamaport.plugins.kernels import Kernels  # no torch: the enum alone

    fn = click.option("--kernels", type=click.Choice([k.value for k in Kernels]), default=Kernels.REFERENCE.value,
                      show_default=True, help="Eager backend's attention: reference ops or Triton kernels.")(fn)
    fn = click.option("--verify", is_flag=True,
                      help="Check every engine file's sha256 against manifest.json before running (reads it all once).")(fn)
    return click.option("--threads", type=int, default=None, help="CPU threads (default: physical cores).")(fn)


@main.command()
@click.argument("engine_dir", type=click.Path())
@click.option("-p", "--prompt", default=None, help="Prompt text.")
@click.option("--prompt-ids", default=None,
              help="Prompt as token ids, e.g. 1,2,3 (for engines exported without a tokenizer).")
@sampling_options
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--truncate", is_flag=True,
              help="Keep the end of a long prompt so it and --max-new-tokens fit the engine's max_seq.")
@click.option("--json", "as_json", is_flag=True, help="Print {text, token_ids, finish_reason, timings} as JSON.")
@backend_options
@user_errors
def generate(engine_dir, prompt, prompt_ids, max_new_tokens, temperature, top_p, top_k, seed, chat, truncate,
             as_json, backend, device, threads, kernels, verify):
    """Generate a completion of PROMPT with ENGINE_DIR (streams to the terminal unless --json).

    Engines without a tokenizer take --prompt-ids and print the generated ids.
    """
    from llamaport.errors import LlamaportError
    from llamaport.runtime import Engine

    if (prompt is None) == (prompt_ids is None):
        raise LlamaportError("give the prompt as text (-p/--prompt) or as token ids (--prompt-ids 1,2,3): one of them")
    if prompt_ids is not None and chat:
        raise LlamaportError("--chat renders a text message through the chat template; use -p, not --prompt-ids")
    source = _parse_ids(prompt_ids) if prompt_ids is not None else prompt
    params = _sampling(max_new_tokens, temperature, top_p, top_k, seed)  # before the engine loads: cheap first
    engine = Engine.open(engine_dir, backend=backend, device=device, threads=threads, kernels=kernels, verify=verify)
    ids = _fit_prompt(engine, source, params, chat, truncate)
    if as_json or engine.tokenizer is None:
        out = engine.generate(ids, params)
        if not as_json:  # no tokenizer to decode with: the ids are the answer
            click.echo(" ".join(map(str, out.token_ids)))
            return
        click.echo(json.dumps({"text": out.text, "token_ids": out.token_ids, "finish_reason": out.finish_reason,
                               "timings": out.timings}))
        return
    for piece in engine.stream(ids, params):
        click.echo(piece, nl=False)
    click.echo()


def _parse_ids(text: str) -> list[int]:
    from llamaport.errors import LlamaportError

    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise LlamaportError("--prompt-ids is empty; give token ids separated by commas, e.g. --prompt-ids 1,2,3")
    try:
        return [int(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("+-").isdigit())
        raise LlamaportError(f"--prompt-ids: {bad!r} is not a token id; give integers separated by commas, "
                             "e.g. --prompt-ids 1,2,3") from None


def _fit_prompt(engine, source, params, chat: bool, truncate: bool) -> list[int]:
    """The prompt's ids, with the CLI's own advice when it does not fit, and a note of what --truncate cut."""
    from llamaport.errors import LlamaportError

    ids, dropped = engine.prompt_ids(source, params, chat=chat, truncate=truncate)
    if not ids:
        raise LlamaportError("the prompt is empty (it encodes to no tokens); give some text")
    if dropped:
        what = "message" if chat else "prompt"
        click.echo(f"note: --truncate dropped the first {dropped} tokens of the {what} (kept its last part, "
                   f"{len(ids)} tokens in all) to leave room for {params.max_new_tokens} new tokens in the engine's "
                   f"max_seq {engine.max_seq}", err=True)
    elif len(ids) > engine.max_seq:
        raise LlamaportError(f"the prompt is {len(ids)} tokens, more than the engine's max_seq {engine.max_seq}; "
                             "shorten it, pass --truncate (keeps its end), or re-export with a larger --max-seq")
    elif len(ids) + params.max_new_tokens > engine.max_seq:
        fit = engine.max_seq - len(ids) + 1
        click.echo(f"note: the prompt is {len(ids)} tokens, so at most {fit} of the {params.max_new_tokens} new "
                   f"tokens fit in the engine's max_seq {engine.max_seq}; --truncate would shorten the prompt "
                   "instead", err=True)
    return ids


@main.command()
@click.argument("engine_dir", type=click.Path())
@click.option("--system", default=None, help="System prompt.")
@sampling_options
@backend_options
@user_errors
def chat(engine_dir, system, max_new_tokens, temperature, top_p, top_k, seed, backend, device, threads, kernels,
         verify):
    """Chat with ENGINE_DIR interactively (streaming). Ctrl-D or Ctrl-C ends; /reset forgets the conversation.

    Old turns are dropped when the conversation no longer fits the engine's cache.
    """
    from llamaport.runtime.interactive import chat_loop

    from llamaport.runtime import Engine

    params = _sampling(max_new_tokens, temperature, top_p, top_k, seed)  # before the engine loads: cheap first
    if system is not None:
        from llamaport.runtime.validate import text

        text("--system", system)
    engine = Engine.open(engine_dir, backend=backend, device=device, threads=threads, kernels=kernels, verify=verify)
    chat_loop(engine, params, system)


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

    from llamaport.runtime.validate import integer

    # The inputs first: they cost nothing to check, unlike the engine and the eager model.
    integer("greedy_tokens", greedy_tokens, 1)
    prompts = [p for p in _read_text(prompts_file, "--prompts").splitlines() if p.strip()] if prompts_file else None
    if prompts_file and not prompts:
        raise LlamaportError(f"--prompts {prompts_file} holds no prompts; write one prompt per line")
    text = _read_text(text_file, "--text") if text_file else None
    if text_file and not text.strip():
        raise LlamaportError(f"--text {text_file} is empty; give some text for the perplexity check")
    from llamaport.enginedir import EngineDirError, check_files

    engine = Engine.open(engine_dir)  # sizes and graph shapes: an engine too damaged to run fails here
    try:  # every file's sha256: a change since export fails check, and the report still says what it changed
        check_files(engine.manifest, hashes=True)
        integrity = []
    except EngineDirError as e:
        integrity = [str(e)]
    if engine.tokenizer is None:
        raise LlamaportError(
            f"{engine_dir} has no tokenizer files (tokenizer.json or tokenizer.model): check cannot encode its text "
            "prompts, and generate/chat cannot take text; re-export from a checkpoint with tokenizer files, or copy "
            "them into the engine directory"
        )
    source = reference or engine.manifest.get("source")
    if not source or not Path(source).exists():
        raise LlamaportError(f"the export's source {source!r} is not here; pass --reference CHECKPOINT")
    ref = Engine.open(source, backend="eager", max_seq=engine.max_seq)
    report = run_check(engine, ref, prompts, text, greedy_tokens, engine.manifest["dtype"],
                       engine.manifest.get("quantization"))
    if integrity:
        report["failures"], report["passed"] = integrity + report["failures"], False
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        centered = report["cosine_of"] == CosineOf.CENTERED_LOGITS  # int4 engines (see CosineOf)
        cos = "cos (c)" if centered else "cos"
        click.echo(f"{'prompt':42} {'max|d|':>9} {cos:>9} {'KL':>9} {'top1':>5} {'top5':>5} {'greedy':>6}")
        for r in report["prompts"]:
            click.echo(f"{r['prompt'][:40]!r:42} {r['max_abs_diff']:9.2e} {r['cosine']:9.6f} {r['kl']:9.2e} "
                       f"{r['top1']:5.2f} {r['top5']:5.2f} {r['greedy_match']:6.2f}")
        ppl = report["perplexity"]
        click.echo(f"perplexity: eager {ppl['reference']:.4f}, engine {ppl['engine']:.4f} ({ppl['tokens']} tokens)")
        if centered:
            click.echo("cos (c): cosine of the logits less their mean (softmax ignores a shift of every logit)")
        click.echo("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
    if not report["passed"]:
        sys.exit(1)


def _read_text(path: str, flag: str) -> str:
    from pathlib import Path

    from llamaport.errors import LlamaportError

    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LlamaportError(f"{flag} {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise LlamaportError(f"{flag} {path}: cannot read it ({e.strerror})") from None


@main.command()
@click.argument("engine_dir", type=click.Path())
@click.option("--prompt-len", default=128, show_default=True)
@click.option("--new-tokens", default=128, show_default=True)
@click.option("--batch", default=1, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@backend_options
@user_errors
def bench(engine_dir, prompt_len, new_tokens, batch, repeats, as_json, backend, device, threads, kernels, verify):
    """Measure prefill/decode tokens/s, time to first token, peak RSS and % of the read-bandwidth roofline."""
    from pathlib import Path

    from llamaport.runtime import Engine
    from llamaport.runtime.bench import check_bench_values, run_bench

    check_bench_values(prompt_len, new_tokens, batch, repeats)  # before the engine loads
    engine = Engine.open(engine_dir, backend=backend, device=device, threads=threads, kernels=kernels, verify=verify)
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


@main.group()
def pipeline():
    """Build, check and benchmark the engines an engines.toml lists, gated on accuracy and speed (for CI).

    See ci/engines.example.toml for every key, and .github/workflows/engines.yml for a ready GitHub workflow.
    """


def _pipeline_verdict(report: dict, out) -> None:
    counts = report["summary"]
    click.echo(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped; "
               f"report in {out}/report.md")
    for entry in report["entries"]:
        for failure in entry["failures"]:
            click.echo(f"FAIL {entry['name']}: {failure['message']}")
    if not report["passed"]:
        sys.exit(1)


@pipeline.command("run")
@click.argument("spec", type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Folder for engines/, entries/ and the reports; reused as the cache on the next run.")
@click.option("--entry", "names", multiple=True, help="Run only this entry (repeatable; default: all).")
@click.option("--baseline", type=click.Path(), default=None,
              help="report.json of the last accepted run: fail on lost accuracy or speed against it.")
@click.option("--jobs", default=1, show_default=True, help="Entries run at once, each in its own process.")
@user_errors
def pipeline_run(spec, out, names, baseline, jobs):
    """Export, check and bench each entry of SPEC (an engines.toml) into OUT; exit 1 when a gate fails.

    Writes OUT/engines/NAME (engine directories), OUT/entries/NAME.json, OUT/report.json, OUT/report.md and
    OUT/chart.png (with the `plot` extra). An entry whose source checksum, options and llamaport version are
    unchanged reuses its engine directory once its files match their sha256s. Entries needing TensorRT or a GPU
    this machine lacks are reported as skipped.
    """
    from llamaport.ci.run import run_pipeline
    from llamaport.ci.spec import load_spec

    report = run_pipeline(load_spec(spec), out, list(names), jobs, baseline)
    _pipeline_verdict(report, out)


@pipeline.command("plan")
@click.argument("spec", type=click.Path())
@click.option("--json", "as_json", is_flag=True,
              help="Print the GitHub Actions matrix ({\"include\": [...]}) on one line.")
@click.option("--runner", type=click.Choice(["cpu", "gpu", "all"]), default="all", show_default=True,
              help="Only the entries that need this kind of runner.")
@user_errors
def pipeline_plan(spec, as_json, runner):
    """List the entries of SPEC with their runner and cache key (as a GitHub Actions matrix with --json)."""
    from llamaport.ci.plan import plan
    from llamaport.ci.spec import Runner, load_spec

    matrix = plan(load_spec(spec), None if runner == "all" else Runner(runner))
    if as_json:
        click.echo(json.dumps(matrix, separators=(",", ":")))
        return
    for job in matrix["include"]:
        click.echo(f"{job['entry']:40} {job['runner']:4} cache {job['cache_key']}")


@pipeline.command("report")
@click.argument("folders", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Folder for the merged report.json, report.md and chart.png.")
@click.option("--baseline", type=click.Path(), default=None, help="report.json of the last accepted run.")
@user_errors
def pipeline_report(folders, out, baseline):
    """Merge the reports of `pipeline run` in FOLDERS (one per CI runner) into one; exit 1 when a gate fails."""
    from pathlib import Path

    from llamaport.ci.report import claim_output, load_report, merge_reports, write_report

    base = load_report(Path(baseline)) if baseline else None
    report = merge_reports([Path(f) for f in folders], Path(out), base, baseline)
    claim_output(Path(out))
    write_report(report, Path(out))
    _pipeline_verdict(report, out)


def run() -> None:
    """The `llamaport` console command: `main`, then an exit that skips tearing down the interpreter.

    Finalizing an interpreter that imported torch, onnxscript and onnxruntime costs 0.5-1.5 s on 2 cores (every
    module's objects and the libraries' static destructors; measured: `import torch` alone exits 0.5 s sooner),
    and a finished command needs none of it: the OS frees the process. What a normal exit does that matters runs
    first: atexit handlers (temporary directories' finalizers among them) and flushing the standard streams.
    Uncaught exceptions keep Python's own path (traceback, normal exit). The Python API never exits this way.
    """
    try:
        main()  # click's standalone mode ends every command in SystemExit
    except SystemExit as done:
        if done.code is not None and not isinstance(done.code, int):
            raise  # a message as exit code: Python prints it
        code = done.code or 0
    else:
        code = 0
    atexit._run_exitfuncs()  # CPython's own exit runs these; os._exit below would not
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`llamaport ... | head`) or stream: nothing left to say
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    run()
