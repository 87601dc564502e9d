"""Bad input across every command and the Python API: one clear error naming the flag or value, the promised exit
status, no traceback, nothing written or lost. Grow the tables whenever a new bad input is found (issue 13)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny import TINY, save_hf_model

from llamaport.cli import main
from llamaport.errors import LlamaportError
from llamaport.exporter import ExportOptions, export_engine
from llamaport.runtime import Engine, SamplingParams

MAX_SEQ, MAX_BATCH = 32, 2
WORDS = [f"w{i}" for i in range(3, TINY["vocab_size"])]
TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
            "{% if add_generation_prompt %}w3{% endif %}")


def _write_word_tokenizer(folder: Path) -> None:
    """A whitespace word-level tokenizer over the tiny vocabulary (ids 0-2 special), with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny checkpoint without tokenizer files, one with them, and the engine exported from the latter."""
    root = tmp_path_factory.mktemp("bad_inputs")
    save_hf_model(root / "hf", "gqa")
    shutil.copytree(root / "hf", root / "hf_tok")
    _write_word_tokenizer(root / "hf_tok")
    export_engine(root / "hf_tok", root / "eng", ExportOptions(max_seq=MAX_SEQ, max_batch=MAX_BATCH))
    return root


@pytest.fixture(scope="module")
def engine(tiny):
    return Engine.open(tiny / "eng")


def _edit_config(folder: Path, drop: str) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config.pop(drop)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _gguf_without_embedding_length(path: Path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_head_count(4)
    writer.add_feed_forward_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


LONG = " ".join(WORDS[:40])  # 40 tokens: more than MAX_SEQ
FILES = {"empty.txt": b"", "blank.txt": b"\n  \n", "latin1.txt": "caf\xe9 au lait\n".encode("latin-1")}


@dataclass(frozen=True)
class Case:
    args: list[str]  # {eng}, {hf}, {tmp} are filled in
    phrase: str  # the message must contain it
    status: int = 1
    setup: str | None = None  # "drop:FIELD" copies hf with that config field removed to {tmp}/src


CLI_CASES = {
    # sampling values: the API's validation, named by flag, exit 1
    "temperature_nan": Case(["generate", "{eng}", "-p", "w3", "--temperature", "nan"],
                            "--temperature must be a finite number >= 0, got nan"),
    "temperature_inf": Case(["generate", "{eng}", "-p", "w3", "--temperature", "inf"],
                            "--temperature must be a finite number >= 0, got inf"),
    "temperature_negative": Case(["generate", "{eng}", "-p", "w3", "--temperature", "-1"], "--temperature"),
    "top_k_negative": Case(["generate", "{eng}", "-p", "w3", "--top-k", "-3"], "--top-k must be an integer >= 0"),
    "top_p_zero": Case(["generate", "{eng}", "-p", "w3", "--top-p", "0"], "--top-p must be a finite number > 0"),
    "top_p_nan": Case(["generate", "{eng}", "-p", "w3", "--top-p", "nan"], "--top-p"),
    "seed_negative": Case(["generate", "{eng}", "-p", "w3", "--seed", "-1"], "--seed must be an integer >= 0"),
    "max_new_tokens_negative": Case(["generate", "{eng}", "-p", "w3", "--max-new-tokens", "-1"], "--max-new-tokens"),
    "threads_zero": Case(["generate", "{eng}", "-p", "w3", "--threads", "0"], "--threads must be an integer >= 1"),
    "threads_negative": Case(["generate", "{eng}", "-p", "w3", "--threads", "-2"], "--threads must be an integer >= 1"),
    "device_tpu": Case(["generate", "{eng}", "-p", "w3", "--device", "tpu"], "--device must be one of 'cpu', 'cuda'"),
    "chat_temperature_nan": Case(["chat", "{eng}", "--temperature", "nan"], "--temperature must be a finite"),
    "chat_device_tpu": Case(["chat", "{eng}", "--device", "tpu"], "--device must be one of"),
    "chat_system_lone_surrogate": Case(["chat", "{eng}", "--system", "w3 \udcff"], "--system is not valid UTF-8"),
    # prompts and token ids
    "prompt_ids_negative": Case(["generate", "{eng}", "--prompt-ids", "1,-1,44"], "token id -1 at position 1"),
    "prompt_ids_vocab_size": Case(["generate", "{eng}", "--prompt-ids", "1,96"], "token id 96 at position 1"),
    "prompt_ids_huge": Case(["generate", "{eng}", "--prompt-ids", str(10**9)], "token id 1000000000"),
    "prompt_ids_2_pow_63": Case(["generate", "{eng}", "--prompt-ids", f"5,{2**63}"], f"token id {2**63}"),
    "prompt_ids_not_int": Case(["generate", "{eng}", "--prompt-ids", "1,x"], "'x' is not a token id"),
    "prompt_ids_float": Case(["generate", "{eng}", "--prompt-ids", "1,2.5"], "'2.5' is not a token id"),
    "prompt_ids_empty": Case(["generate", "{eng}", "--prompt-ids", " , "], "--prompt-ids is empty"),
    "prompt_and_ids": Case(["generate", "{eng}", "-p", "w3", "--prompt-ids", "1"], "one of them"),
    "no_prompt": Case(["generate", "{eng}"], "one of them"),
    "ids_with_chat": Case(["generate", "{eng}", "--prompt-ids", "1", "--chat"], "use -p, not --prompt-ids"),
    "prompt_lone_surrogate": Case(["generate", "{eng}", "-p", "w3 \udcff w4"], "not valid UTF-8"),
    "prompt_too_long": Case(["generate", "{eng}", "-p", LONG], "pass --truncate"),
    "chat_prompt_too_long": Case(["generate", "{eng}", "-p", LONG, "--chat"], "pass --truncate"),
    "truncate_no_room": Case(["generate", "{eng}", "-p", LONG, "--truncate", "--max-new-tokens", "40"],
                             "ask for at most 31 new tokens"),
    "missing_engine": Case(["generate", "{tmp}/nowhere", "-p", "w3"], "no such engine directory"),
    "unknown_backend": Case(["generate", "{eng}", "-p", "w3", "--backend", "tpu"], "backend 'tpu' does not exist"),
    "empty_prompt": Case(["generate", "{eng}", "-p", ""], "the prompt is empty"),
    "info_missing_source": Case(["info", "{tmp}/nowhere"], "no such file or folder"),
    "check_missing_reference": Case(["check", "{eng}", "--reference", "{tmp}/nowhere"], "pass --reference"),
    # bench: only measurements it can make honestly, and no advice about options it lacks
    "bench_batch_beyond_engine": Case(["bench", "{eng}", "--batch", "4", "--prompt-len", "4", "--new-tokens", "4"],
                                      "exceeds this engine's max_batch 2"),
    "bench_new_tokens_zero": Case(["bench", "{eng}", "--new-tokens", "0"], "--new-tokens must be an integer >= 2"),
    "bench_repeats_zero": Case(["bench", "{eng}", "--repeats", "0"], "--repeats must be an integer >= 1"),
    "bench_prompt_len_zero": Case(["bench", "{eng}", "--prompt-len", "0"], "--prompt-len must be"),
    "bench_batch_zero": Case(["bench", "{eng}", "--batch", "0"], "--batch must be"),
    "bench_too_long": Case(["bench", "{eng}", "--prompt-len", "30", "--new-tokens", "8"],
                           "lower --prompt-len or --new-tokens"),
    "bench_threads_zero": Case(["bench", "{eng}", "--threads", "0"], "--threads must be"),
    # check: inputs refused before the engine and the eager model load
    "check_empty_prompts_file": Case(["check", "{eng}", "--prompts", "{tmp}/empty.txt"], "holds no prompts"),
    "check_blank_prompts_file": Case(["check", "{eng}", "--prompts", "{tmp}/blank.txt"], "holds no prompts"),
    "check_prompts_not_utf8": Case(["check", "{eng}", "--prompts", "{tmp}/latin1.txt"], "is not UTF-8 text"),
    "check_empty_text_file": Case(["check", "{eng}", "--text", "{tmp}/empty.txt"], "is empty"),
    "check_greedy_tokens_zero": Case(["check", "{eng}", "--greedy-tokens", "0"], "--greedy-tokens must be"),
    # export: option checks before any model work (see also the subprocess test below)
    "export_max_seq_2": Case(["export", "{hf}", "-o", "{tmp}/out", "--max-seq", "2"],
                             "--max-seq must be an integer of at least 8"),
    "export_max_seq_0": Case(["export", "{hf}", "-o", "{tmp}/out", "--max-seq", "0"], "--max-seq must be"),
    "export_max_seq_beyond_model": Case(["export", "{hf}", "-o", "{tmp}/out", "--max-seq", "100"],
                                        "exceeds the 64 positions this model supports"),
    "export_bad_target": Case(["export", "{hf}", "-o", "{tmp}/out", "--target", "tpu"], "--target 'tpu' does not"),
    "export_bad_dtype": Case(["export", "{hf}", "-o", "{tmp}/out", "--dtype", "fp64"], "--dtype 'fp64' is not"),
    "export_bad_task": Case(["export", "{hf}", "-o", "{tmp}/out", "--task", "chat"], "--task 'chat' is not supported"),
    "export_max_batch_zero": Case(["export", "{hf}", "-o", "{tmp}/out", "--max-batch", "0"], "--max-batch must be"),
    "export_missing_source": Case(["export", "{tmp}/missing.gguf", "-o", "{tmp}/out"], "no such file or folder"),
    "export_existing_output": Case(["export", "{hf}", "-o", "{eng}"], "already exists"),
    # configs missing a field: transformers' default is used, and named when the weights disagree
    "info_missing_hidden_size": Case(["info", "{tmp}/src"], "'hidden_size'", setup="drop:hidden_size"),
    "info_missing_heads": Case(["info", "{tmp}/src"], "'num_attention_heads'", setup="drop:num_attention_heads"),
    "info_missing_vocab_size": Case(["info", "{tmp}/src"], "'vocab_size'", setup="drop:vocab_size"),
    "info_missing_layers": Case(["info", "{tmp}/src"], "'num_hidden_layers'", setup="drop:num_hidden_layers"),
    "export_missing_intermediate": Case(["export", "{tmp}/src", "-o", "{tmp}/out", "--max-seq", "16"],
                                        "'intermediate_size'", setup="drop:intermediate_size"),
    "info_meta_params_without_dim": Case(["info", "{tmp}/src"], "field 'dim' is missing", setup="meta_without_dim"),
    "info_gguf_without_embedding_length": Case(["info", "{tmp}/src.gguf"], "'llama.embedding_length'",
                                               setup="gguf_without_embedding_length"),
    "convert_missing_hidden_size": Case(["convert", "{tmp}/src", "-o", "{tmp}/out"], "'hidden_size'",
                                        setup="drop:hidden_size"),
    # text that does not parse at all stays click's usage error (exit 2, with the usage line): see user_errors
    "top_k_not_a_number": Case(["generate", "{eng}", "-p", "w3", "--top-k", "abc"], "Invalid value for '--top-k'", 2),
    "bench_batch_not_a_number": Case(["bench", "{eng}", "--batch", "two"], "Invalid value for '--batch'", 2),
}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_refuses_bad_input_with_one_error_line(name, tiny, tmp_path):
    case = CLI_CASES[name]
    for file, content in FILES.items():
        (tmp_path / file).write_bytes(content)
    if case.setup and case.setup.startswith("drop:"):
        _edit_config(shutil.copytree(tiny / "hf", tmp_path / "src"), case.setup.split(":")[1])
    elif case.setup == "gguf_without_embedding_length":
        _gguf_without_embedding_length(tmp_path / "src.gguf")
    elif case.setup == "meta_without_dim":
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "params.json").write_text(json.dumps({"n_layers": 2, "n_heads": 4}))
        (tmp_path / "src" / "consolidated.00.pth").write_bytes(b"")
    args = [a.format(eng=tiny / "eng", hf=tiny / "hf", tmp=tmp_path) for a in case.args]
    before_engine, before_tmp = _snapshot(tiny), _snapshot(tmp_path)
    result = CliRunner().invoke(main, args, input="")
    assert result.exit_code == case.status, result.output
    assert case.phrase in result.output, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if case.status == 1:
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.output
    assert _snapshot(tiny) == before_engine and _snapshot(tmp_path) == before_tmp  # nothing written or lost


def _bad_api_calls(engine: Engine) -> dict:
    S = SamplingParams
    return {
        "token_id_negative": (lambda: engine.generate([[1, -1, 44]]), "token id -1 at position 1"),
        "token_id_vocab_size": (lambda: engine.generate([5, 96]), "token id 96"),
        "token_id_huge": (lambda: engine.generate([5, 10**9]), "token id 1000000000"),
        "token_id_2_pow_63": (lambda: engine.generate([5, 2**63]), f"token id {2**63}"),
        "token_id_float": (lambda: engine.generate([5, 2.5]), "token id 2.5 at position 1 is not an integer"),
        "token_id_bool": (lambda: engine.generate([5, True]), "is not an integer"),
        "batch_row_bad": (lambda: engine.generate([[5, 6], [7, -3]]), "prompt 1: token id -3"),
        "logits_negative": (lambda: engine.logits([1, -1]), "token id -1"),
        "logits_huge": (lambda: engine.logits([1, 10**9]), "token id 1000000000"),
        "stop_token_beyond_vocab": (lambda: engine.generate([5], S(stop_token_ids=[96])),
                                    "stop_token_ids: token id 96"),
        "max_new_tokens_float": (lambda: S(max_new_tokens=2.5), "max_new_tokens must be an integer"),
        "max_new_tokens_bool": (lambda: S(max_new_tokens=True), "max_new_tokens must be an integer"),
        "temperature_inf": (lambda: S(temperature=float("inf")), "temperature must be a finite number"),
        "temperature_string": (lambda: S(temperature="0.7"), "temperature must be a finite number"),
        "top_k_negative": (lambda: S(top_k=-3), "top_k must be an integer >= 0"),
        "min_p_one": (lambda: S(min_p=1.0), "min_p must be"),
        "repetition_penalty_zero": (lambda: S(repetition_penalty=0), "repetition_penalty must be"),
        "seed_negative": (lambda: S(seed=-1), "seed must be an integer >= 0"),
        "stop_token_negative": (lambda: S(stop_token_ids=[-1]), "token id -1"),
        "stop_empty_string": (lambda: S(stop=[""]), "non-empty strings"),
        "chat_role_wizard": (lambda: engine.chat([{"role": "wizard", "content": "w3"}]), "role 'wizard'"),
        "chat_content_not_text": (lambda: engine.chat([{"role": "user", "content": 5}]), "content must be text"),
        "chat_not_a_list": (lambda: engine.chat("w3"), "non-empty list"),
        "chat_empty": (lambda: engine.chat([]), "non-empty list"),
        "prompt_lone_surrogate": (lambda: engine.generate("w3 \udcff"), "not valid UTF-8"),
        "prompt_not_text_or_ids": (lambda: engine.generate(12), "text or a sequence of token ids"),
        "batch_mixing_text_and_int": (lambda: engine.generate(["w3", 5]), "text or a sequence of token ids"),
        "params_not_sampling_params": (lambda: engine.generate("w3", {"temperature": 0.5}), "must be a SamplingParams"),
        "stream_bad_id": (lambda: list(engine.stream([5, -1])), "token id -1"),
        "logits_empty": (lambda: engine.logits([]), "logits needs 1 to 32 tokens"),
        "open_max_seq_zero": (lambda: Engine.open(engine.manifest.folder, max_seq=0), "max_seq must be"),
        "open_unknown_backend": (lambda: Engine.open(engine.manifest.folder, backend="tpu"), "does not exist"),
        "empty_prompt_ids": (lambda: engine.generate([]), "at least one token"),
        "prompt_too_long": (lambda: engine.generate(LONG), "exceeds the engine's max_seq 32"),
        "truncate_no_room": (lambda: engine.generate(LONG, S(max_new_tokens=32), truncate=True), "at most 31 new"),
        "open_device_tpu": (lambda: Engine.open(engine.manifest.folder, device="tpu"), "device must be one of"),
        "open_threads_zero": (lambda: Engine.open(engine.manifest.folder, threads=0), "threads must be an integer"),
        "bench_batch_beyond_engine": (lambda: _bench(engine, batch=4), "max_batch 2"),
        "bench_new_tokens_zero": (lambda: _bench(engine, new_tokens=0), "new_tokens must be"),
        "check_no_prompts": (lambda: _check(engine, prompts=[]), "no check prompts"),
        "check_empty_text": (lambda: _check(engine, text=" "), "perplexity text is empty"),
        "check_engine_without_tokenizer": (lambda: _check(_without_tokenizer(engine)), "no tokenizer files"),
    }


def _bench(engine, **kw):
    from llamaport.runtime.bench import run_bench

    return run_bench(engine, engine.manifest.folder, **{"prompt_len": 4, "new_tokens": 4, **kw})


def _check(engine, **kw):
    from llamaport.runtime.check import run_check

    return run_check(engine, None, **kw)  # refused before the reference is used


def _without_tokenizer(engine):
    bare = Engine(engine.backend, None, engine.config, None, engine.manifest)
    return bare


API_CASES = sorted(_bad_api_calls(None))


@pytest.mark.parametrize("name", API_CASES)
def test_api_refuses_bad_input_with_a_llamaport_error(name, engine):
    call, phrase = _bad_api_calls(engine)[name]
    with pytest.raises(LlamaportError) as err:
        call()
    assert phrase in str(err.value)


def test_engine_stays_usable_after_refused_input(engine):
    with pytest.raises(LlamaportError):
        engine.generate([[1, -1, 44]])
    assert len(engine.generate([5, 6], SamplingParams(max_new_tokens=3, ignore_eos=True)).token_ids) == 3


def test_truncate_keeps_the_prompt_end_leaves_room_for_new_tokens_and_says_so(tiny):
    result = CliRunner().invoke(main, ["generate", str(tiny / "eng"), "-p", LONG, "--truncate",
                                       "--max-new-tokens", "20", "--json"])
    assert result.exit_code == 0, result.output
    assert "dropped the first 28 tokens of the prompt" in result.output and "12 tokens in all" in result.output
    engine = Engine.open(tiny / "eng")
    out = engine.generate(LONG, SamplingParams(max_new_tokens=20, ignore_eos=True), truncate=True)
    assert out.prompt_token_ids == engine.encode(LONG)[-12:] and len(out.token_ids) == 20
    assert out.truncated_tokens == 28


def test_truncate_with_chat_shortens_the_message_and_keeps_the_template(engine):
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    out = engine.generate(LONG, params, chat=True, truncate=True)
    full = engine.apply_chat_template([{"role": "user", "content": LONG}])
    assert len(out.prompt_token_ids) <= MAX_SEQ - 10 and out.truncated_tokens > 0
    # the template's start (<s> user) and end survive; the message keeps its last words
    assert out.prompt_token_ids[:2] == full[:2] and out.prompt_token_ids[-6:] == full[-6:]
    assert len(out.token_ids) == 10


def test_chat_keeps_the_session_after_a_message_too_long(tiny):
    result = CliRunner().invoke(main, ["chat", str(tiny / "eng"), "--max-new-tokens", "3"],
                                input=" ".join(WORDS[:60]) + "\nw5 w6\n")
    assert result.exit_code == 0, result.output
    assert "it was not sent and the conversation is kept" in result.output
    assert "--truncate" not in result.output and "Traceback" not in result.output
    assert result.output.count("> ") >= 3  # asked again after the refusal, and after the reply


def test_chat_says_when_the_system_prompt_leaves_no_room(tiny):
    result = CliRunner().invoke(main, ["chat", str(tiny / "eng"), "--system", " ".join(WORDS[:40])], input="w5\n")
    assert result.exit_code == 0, result.output
    assert "restart with a shorter --system" in result.output and "Traceback" not in result.output


def test_export_without_tokenizer_says_so_and_generate_takes_prompt_ids(tiny, tmp_path):
    result = CliRunner().invoke(main, ["export", str(tiny / "hf"), "-o", str(tmp_path / "e"), "--max-seq", "16"])
    assert result.exit_code == 0, result.output
    assert "has no tokenizer files" in result.output and "--prompt-ids" in result.output
    result = CliRunner().invoke(main, ["generate", str(tmp_path / "e"), "--prompt-ids", "5,6,7",
                                       "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    ids = [int(t) for t in result.output.split()]
    assert 1 <= len(ids) <= 3 and all(0 <= t < TINY["vocab_size"] for t in ids)
    result = CliRunner().invoke(main, ["generate", str(tmp_path / "e"), "-p", "hello"])
    assert result.exit_code == 1 and "--prompt-ids 1,2,3" in result.output


def test_export_option_errors_come_before_torch_is_imported(tiny, tmp_path):
    """One subprocess (a fresh interpreter) runs every cheap refusal and reports whether torch got imported."""
    script = textwrap.dedent(f"""
        import sys
        from click.testing import CliRunner
        from llamaport.cli import main
        hf, out = {str(tiny / "hf")!r}, {str(tmp_path / "out")!r}
        for extra in (["--max-seq", "2"], ["--dtype", "fp64"], ["--target", "x"], ["--task", "x"],
                      ["--max-batch", "0"], ["--max-seq", "100"]):
            assert CliRunner().invoke(main, ["export", hf, "-o", out, *extra]).exit_code == 1, extra
        assert CliRunner().invoke(main, ["export", hf + "/missing.gguf", "-o", out]).exit_code == 1
        print("torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_chat_with_stdin_closed_ends_without_a_traceback(tiny):
    done = subprocess.run(["bash", "-c", f"{sys.executable} -m llamaport.cli chat {tiny / 'eng'} 0<&-"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0 or "standard input, which is closed" in done.stderr


def test_console_command_runs_atexit_flushes_its_output_and_exits_with_the_command_code(tiny):
    """`run` ends the process with os._exit (a fast exit): what a normal exit does must still happen."""
    script = textwrap.dedent(f"""
        import atexit, sys
        atexit.register(lambda: print("atexit ran"))
        sys.argv = ["llamaport", "generate", {str(tiny / "eng")!r}, "-p", "a b", "--max-new-tokens", "2", "--json"]
        from llamaport.cli import run
        run()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    body, ran = done.stdout.rstrip().rsplit("\n", 1)
    assert json.loads(body)["token_ids"] and ran == "atexit ran"
    refused = subprocess.run([sys.executable, "-m", "llamaport.cli", "generate", str(tiny / "missing")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and refused.stderr.startswith("error: "), refused.stderr


def test_option_tables_match_the_exporter():
    from llamaport import export_options
    from llamaport.exporter import export
    from llamaport.plugins.translations import TARGETS

    assert export_options.TARGETS == tuple(TARGETS)
    assert set(export_options.DTYPES) == set(export.DTYPES) and set(export_options.TASKS) == set(export.TASKS)


def test_chat_refuses_a_message_that_is_not_utf8_and_goes_on(tiny):
    result = CliRunner().invoke(main, ["chat", str(tiny / "eng"), "--max-new-tokens", "2"], input=b"w3 \xff\xfe\nw5\n")
    assert result.exit_code == 0, result.output
    assert "not valid UTF-8" in result.output and "the conversation is kept" in result.output
    # strict UTF-8 stdin (CliRunner) raises on the bad line; a terminal's surrogateescape stdin hands it over and
    # validate.text refuses it: either way the session goes on and asks again
    assert "Traceback" not in result.output and result.output.count("> ") >= 2
