"""Int4 benchmarks.

`python benchmarks/int4.py levels`: MatMulNBits accuracy_level 0 (fp32 activations) vs 4 (int8 activations) on one
SmolLM2-135M-shaped decoder layer's linears (qkv 576->960, o 576->576, gate_up 576->3072, down 1536->576), decode
(M=1) and prefill (M=128) shapes, interleaved rounds in one process, median of per-round times; also the fp32
MatMul for scale. This picks quant.DEFAULT_ACCURACY_LEVEL.

`python benchmarks/int4.py quality SRC`: perplexity / KL / top-1 / greedy agreement of int4 weights (dequantized,
eager) vs fp32 for RTN, GPTQ and GGUF reuse at the given group sizes, on check.py's TEXT + HELD_OUT below (567 tokens
with SmolLM2's tokenizer; no 8-word run in common with the calibration text).

`python benchmarks/int4.py heldout > held.txt`: that text, for `llamaport check ENGINE --text held.txt`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

SMOLLM2_LINEARS = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (N, K)


def _layer_graph(form_level: int | None, group: int, m: int):
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from llamaport.exporter.quant import AccuracyLevel
    from llamaport.exporter.quant_lowering import attach_initializers, quantize_graph, source_from_weight

    torch.manual_seed(0)
    nodes, inits, linears = [], [], {}
    inputs, outputs = [], []
    for i, (n, k) in enumerate(SMOLLM2_LINEARS):
        w = torch.randn(n, k) * 0.05
        inits.append(numpy_helper.from_array(w.T.numpy().copy(), f"W{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"W{i}"], [f"y{i}"]))
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, m, k]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, m, n]))
        linears[f"W{i}"] = source_from_weight(f"w{i}", w, 4, group, False)
    model = helper.make_model(helper.make_graph(nodes, "layer", inputs, outputs, inits),
                              opset_imports=[helper.make_operatorsetid("", 21)])
    if form_level is not None:
        attach_initializers(model, quantize_graph(model, linears, "ort", level=AccuracyLevel(form_level)))
    return model


def levels(rounds: int, iters: int, threads: int, group: int) -> None:
    import onnxruntime as ort

    results = {}
    for m in (1, 128):
        sessions = {}
        for name, level in (("fp32 MatMul", None), ("int4 level 0", 0), ("int4 level 4", 4)):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            model = _layer_graph(level, group, m)
            sessions[name] = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = {f"x{i}": np.random.randn(1, m, k).astype(np.float32) for i, (_, k) in enumerate(SMOLLM2_LINEARS)}
        times = {name: [] for name in sessions}
        for _ in range(rounds):
            for name, sess in sessions.items():
                sess.run(None, feeds)
                start = time.perf_counter()
                for _ in range(iters):
                    sess.run(None, feeds)
                times[name].append((time.perf_counter() - start) / iters)
        for name, ts in times.items():
            results[(m, name)] = statistics.median(ts)
            print(f"M={m:<4} {name:<14} median {statistics.median(ts) * 1e6:8.1f} us  best {min(ts) * 1e6:8.1f} us")


HELD_OUT = (  # written for this benchmark; not in the calibration text
    "The old library stood at the corner of two quiet streets, its windows tall and narrow, its doors painted a deep "
    "green that had faded in the sun. Inside, the air smelled of paper and polish. Children came after school to "
    "read comics in the soft chairs by the radiator, and retired teachers argued gently over the crossword at the long "
    "oak table. The librarian, a patient woman with silver glasses, knew where every book belonged and which ones "
    "had gone missing years ago. When the town council proposed closing the building to save money, the whole "
    "neighbourhood wrote letters, held a bake sale and filled the council chamber until the plan was dropped. "
    "Electricity is the flow of electric charge, usually carried by electrons moving through a wire. A battery pushes "
    "charge around a circuit; the push is measured in volts, the flow in amperes, and the opposition to the flow in "
    "ohms. Ohm's law ties the three together: the voltage across a resistor equals the current through it multiplied "
    "by its resistance. Power, measured in watts, is voltage times current, which is why a kettle that draws a large "
    "current from the mains heats water quickly. Most homes receive alternating current, whose direction reverses "
    "fifty or sixty times every second, because it can be stepped up to high voltages for efficient transmission and "
    "stepped down again for safe use. "
    "Honey bees live in colonies of tens of thousands: one queen, who lays the eggs, a few hundred male drones and "
    "a great many female workers. A worker's job changes as she ages. Young bees clean the cells and feed the "
    "larvae, older ones build comb from wax made in their own bodies, guard the entrance, and finally fly out to "
    "gather nectar and pollen from flowers up to a few kilometres away. A forager that finds a rich patch returns "
    "and performs a waggle dance on the comb; the angle of the dance tells her sisters the direction of the food "
    "relative to the sun, and its length tells them how far to fly. "
    "The fisherman pushed his boat off the shingle an hour before dawn, as his father had done and his grandfather "
    "before him. The sea was flat and grey, and gulls followed him out past the harbour wall, crying for scraps. He "
    "set his pots along the edge of the reef where the water turned from green to black, marking each line with an "
    "orange float, and then sat for a while with a flask of tea, watching the light come up over the headland."
)


def _quality_variants(method_groups: list[str]):
    for item in method_groups:
        method, _, rest = item.partition("-")
        group = int(rest.rstrip("as").lstrip("g")) if rest else 32
        symmetric = rest.endswith("s")
        yield item, method, group, symmetric


def quality(src: str, variants: list[str], greedy_tokens: int) -> None:
    """Eager quality of each variant's dequantized weights vs the checkpoint's own float weights."""
    import copy

    import torch

    from llamaport.exporter.quant import QuantSpec
    from llamaport.exporter.quant_export import FUSED, linear_parameters
    from llamaport.exporter.quant_methods import calibration_ids, gguf_codes, gptq_model, rtn
    from llamaport.models import read_checkpoint
    from llamaport.models.loaders.checkpoint import materialize
    from llamaport.models.quantized import QuantizedWeight
    from llamaport.runtime.check import PROMPTS, TEXT
    from llamaport.runtime.tokenizer import Tokenizer

    torch.set_grad_enabled(False)
    ck = read_checkpoint(src)
    config = ck.config
    tok = Tokenizer.from_files(ck.tokenizer_files)
    base = materialize(ck).fuse_projections()
    text_ids = torch.tensor([tok.encode(TEXT + " " + HELD_OUT)])
    prompts = [tok.encode(p) for p in PROMPTS]

    def evaluate(model):
        logits = model(text_ids)[0]  # (S, V)
        greedy = []
        for ids in prompts:
            seq = list(ids)
            for _ in range(greedy_tokens):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            greedy.append(seq[len(ids):])
        return logits, greedy

    ref_logits, ref_greedy = evaluate(base)

    def report(name, model, seconds):
        logits, greedy = evaluate(model)
        logp = torch.log_softmax(logits[:-1].double(), -1)
        ref_logp = torch.log_softmax(ref_logits[:-1].double(), -1)
        nll = -logp[torch.arange(len(logp)), text_ids[0, 1:]]
        ref_nll = -ref_logp[torch.arange(len(logp)), text_ids[0, 1:]]
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
        top1 = (logits.argmax(-1) == ref_logits.argmax(-1)).double().mean()
        agree = []
        for a, b in zip(greedy, ref_greedy):
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(b))
            agree.append(same / len(b))
        print(f"| {name} | {nll.mean().exp():.4f} (fp {ref_nll.mean().exp():.4f}) | {kl:.4f} | {top1:.3f} | "
              f"{sum(agree) / len(agree):.3f} | {seconds:.0f} s |", flush=True)

    print(f"text: {text_ids.shape[1]} tokens; greedy: {len(prompts)} prompts x {greedy_tokens} tokens")
    print("| variant | perplexity | KL vs fp | top-1 vs fp | greedy prefix agreement | quantize time |")
    print("| --- | --- | --- | --- | --- | --- |")
    names = [p for p in linear_parameters(config) if p != "lm_head.weight"]
    state = dict(base.named_parameters())
    for item, method, group, symmetric in _quality_variants(variants):
        start = time.perf_counter()
        model = copy.deepcopy(base)
        head = rtn(state["model.embed_tokens.weight"], 8, 64 if config.hidden_size % 64 == 0 else 32, True)
        if method == "rtn":
            codes = {p: rtn(state[p], 4, group, symmetric) for p in names}
        elif method == "gptq":
            ids = calibration_ids(tok.encode, None, QuantSpec().calib_tokens, QuantSpec().calib_seq_len)
            codes = gptq_model(model, ids, 4, group, symmetric)
        elif method == "gguf":
            get = gguf_codes(ck.source, config)

            def parts(p):
                for fused, members in FUSED.items():
                    if f".{fused}." in p:
                        prefix, suffix = p.split(f".{fused}.")
                        return [f"{prefix}.{m}.{suffix}" for m in members]
                return [p]

            codes = {p: QuantizedWeight.cat([get(x) for x in parts(p)]) for p in names}
            head = get("model.embed_tokens.weight")
        else:
            raise SystemExit(f"unknown method {method}")
        codes["model.embed_tokens.weight"] = head  # tied: the head reads the same parameter
        # Same numbers as quantize_model's modules, but dequantized once (they re-dequantize per call: too slow
        # for 40 greedy forwards per variant on 2 shared cores).
        params = dict(model.named_parameters(remove_duplicate=False))
        for name, q in codes.items():
            params[name].data = q.dequantize()
        report(item, model, time.perf_counter() - start)


def export_int4(src: str, out: str, method: str, group: int | None, max_seq: int, exact: bool) -> None:
    """An int4 `ort` engine directory through today's export_engine, with the quantization pass inserted after
    tracing (interim, until export.py takes --quant: see exporter/quant_export.py). Verification is skipped here;
    `verify` below checks the graph against its dequantized reference."""
    import torch

    import llamaport.exporter.export as export_module
    from llamaport.exporter import ExportOptions, export_engine
    from llamaport.exporter.quant import parse_spec
    from llamaport.exporter.quant_export import quantize_for_export
    from llamaport.models import read_checkpoint

    spec = parse_spec(method=method, group_size=group, exact=exact)
    checkpoint = read_checkpoint(src)
    trace = export_module.trace_graph

    def trace_and_quantize(model, config, graph_spec, dtype, sources):
        traced = trace(model, config, graph_spec, dtype, sources)
        resolved, _, entry = quantize_for_export(traced, spec, graph_spec.target, dtype, checkpoint)
        print("quantized:", entry)
        return traced

    export_module.trace_graph = trace_and_quantize
    try:
        start = time.perf_counter()
        export_engine(src, out, ExportOptions(target="ort", max_seq=max_seq, verify=False, overwrite=True))
        print(f"export: {time.perf_counter() - start:.0f} s")
    finally:
        export_module.trace_graph = trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    lv = sub.add_parser("levels")
    lv.add_argument("--rounds", type=int, default=7)
    lv.add_argument("--iters", type=int, default=200)
    lv.add_argument("--threads", type=int, default=2)
    lv.add_argument("--group-size", type=int, default=64)
    qu = sub.add_parser("quality")
    qu.add_argument("src")
    qu.add_argument("--variants", nargs="+", default=["gguf", "rtn-g32a", "gptq-g32a", "rtn-g64a", "gptq-g64a",
                                                       "rtn-g64s", "gptq-g64s"])
    qu.add_argument("--greedy-tokens", type=int, default=32)
    sub.add_parser("heldout", help="print the held-out perplexity text (for `llamaport check --text`)")
    ex = sub.add_parser("export")
    ex.add_argument("src")
    ex.add_argument("out")
    ex.add_argument("--method", default="rtn")
    ex.add_argument("--group-size", type=int, default=None)
    ex.add_argument("--max-seq", type=int, default=512)
    ex.add_argument("--exact", action="store_true", help="accuracy_level 0 (fp32 activations)")
    args = parser.parse_args()
    if args.cmd == "levels":
        levels(args.rounds, args.iters, args.threads, args.group_size)
    elif args.cmd == "export":
        export_int4(args.src, args.out, args.method, args.group_size, args.max_seq, args.exact)
    elif args.cmd == "heldout":
        from llamaport.runtime.check import TEXT

        print(TEXT + " " + HELD_OUT)
    elif args.cmd == "quality":
        quality(args.src, args.variants, args.greedy_tokens)


if __name__ == "__main__":
    main()
