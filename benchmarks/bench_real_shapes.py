"""One MoE layer in the exact shapes of real checkpoints, random weights: setup, forward, memory.

Plain script (not a test):
    python benchmarks/bench_real_shapes.py [--shapes olmoe-1b-7b ...] [--dtypes float32 bfloat16]
        [--device pcm] [--tokens 512] [--long-tokens 8192] [--engines stacked] [--repeat 5]
    python benchmarks/bench_real_shapes.py --forward-devices pcm aihwkit-standard --shapes olmoe-1b-7b \
        --dtypes float32 [--forward-threads 1 2]

For each shape the script builds the transformers MoE block class of that family from a config with
the checkpoint's sizes (random weights), then measures, in one run:

* ``floor``: the exact-physics floor -- per converted weight, the 4 normal draws, 2 logs and 2 exps
  that exact PCM programming + drift needs (2 programming draws for the device pair, 1 drift
  exponent with its log, 1 read-noise draw with the log and exp of ``g^0.65``, the exp of the
  drift), run with ``normal_`` / ``log_`` / ``exp_`` over 1M-element chunks of that many weights
  (best of 3); the same floor for every device;
* ``setup``: ``convert_to_analog_moe`` + ``program_analog_weights(seed, t_inference)`` (programming
  and drift in one pass), in seconds, in floor multiples and in digital-forward equivalents at
  ``--tokens`` and ``--long-tokens`` tokens; ``program + drift / floor`` is the programming step
  alone (drift-compensation read-outs included: 2 more normal draws per weight on ``pcm``);
* the same ratios by this thread's CPU time (``*_cpu``): on a shared machine they leave out the
  time other jobs hold the cores (torch runs with ``--threads`` threads, 1 by default);
* ``two-call``: the documented flow ``program_analog_weights(seed)`` then
  ``drift_analog_weights(t_inference)`` on the same converted layer (the same chip, bit for bit),
  in seconds and over the one-call programming time;
* ``physics``: the time of AIHWKit's own noise-model calls (``apply_programming_noise`` +
  ``apply_drift_noise``) on the same weights, without any tile bookkeeping: what reusing AIHWKit's
  physics costs at least;
* ``forward ratio``: analog forward / digital forward of the same layer on ``--tokens`` tokens,
  medians of interleaved calls; the digital forward uses the fastest of transformers' experts
  implementations (``eager``, ``batched_mm``, ``grouped_mm``) measured here;
* memory: bytes held by the layer after programming (distinct tensor storages) over the digital
  layer's, and the process's peak resident memory during conversion + programming over the
  digital layer's bytes (RSS sampled every 2 ms, relative to the RSS before the digital layer was
  built). Both RSS figures are taken relative to the RSS right before conversion (the digital
  layer alive, freed heap pages returned with ``malloc_trim``) plus the digital layer's bytes; on
  CUDA, ``torch.cuda.max_memory_allocated`` likewise.

Results: ``benchmarks/results/bench_real_shapes.json``.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time

import _common
import torch
from bench_memory import held_bytes
from torch import nn

SHAPES = {
    # name: (family, config kwargs)
    "olmoe-1b-7b": ("olmoe", dict(hidden_size=2048, intermediate_size=1024, num_experts=64, num_experts_per_tok=8)),
    "qwen1.5-moe-a2.7b": ("qwen2_moe", dict(hidden_size=2048, moe_intermediate_size=1408, num_experts=60,
                                            num_experts_per_tok=4, shared_expert_intermediate_size=5632)),
    "deepseek-v2-lite": ("deepseek_v2", dict(hidden_size=2048, moe_intermediate_size=1408, n_routed_experts=64,
                                             num_experts_per_tok=6, n_shared_experts=2, topk_method="group_limited_greedy",
                                             n_group=8, topk_group=3)),
    "mixtral-8x7b": ("mixtral", dict(hidden_size=4096, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2)),
}
FLOOR_OPS = "4 normal draws + 2 logs + 2 exps per converted weight"


def build_block(shape: str, dtype: torch.dtype) -> nn.Module:
    """A module holding one MoE block of ``shape`` (random weights, ``dtype``)."""
    family, kwargs = SHAPES[shape]
    common = dict(num_hidden_layers=1, num_attention_heads=16, vocab_size=128)
    if family == "olmoe":
        from transformers import OlmoeConfig
        from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock as Block

        config = OlmoeConfig(**common, **kwargs)
    elif family == "qwen2_moe":
        from transformers import Qwen2MoeConfig
        from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock as Block

        config = Qwen2MoeConfig(**common, **kwargs)
    elif family == "deepseek_v2":
        from transformers import DeepseekV2Config
        from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe as Block

        config = DeepseekV2Config(**common, **kwargs)
    else:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock as Block

        config = MixtralConfig(**common, **kwargs)
    config._experts_implementation = "eager"
    with torch.device("meta"):
        block = Block(config)
    block = block.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(0.02) if p.dim() > 1 else torch.zeros(p.shape))
    holder = nn.Module()
    holder.mlp = block.to(dtype)
    holder.config = config
    return holder.eval()


def converted_weights(block: nn.Module) -> int:
    return sum(p.numel() for name, p in block.named_parameters() if "expert" in name or "gate" in name)


def set_experts_implementation(holder: nn.Module, name: str) -> None:
    holder.config._experts_implementation = name
    for m in holder.modules():
        if getattr(m, "config", None) is not None:
            m.config._experts_implementation = name


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples the resident set size in a thread while the ``with`` block runs."""

    def __enter__(self):
        self.peak, self._stop = rss(), False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, rss())


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS shows what is alive."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def floor_seconds(n_weights: int, on: torch.device | None = None, repeat: int = 3,
                  clock=time.perf_counter) -> float:
    """The exact-physics floor: 4 normal draws, 2 logs and 2 exps per weight (1M-element chunks; best of
    ``repeat``), by ``clock`` (wall time by default)."""
    on = on or torch.device("cpu")
    size = min(n_weights, 2**20)
    normal = torch.empty(size, device=on)
    positive = torch.rand(size, device=on).add_(0.5)
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        left = n_weights
        while left > 0:
            n = min(left, size)
            for _ in range(4):
                normal[:n].normal_()
            part = positive[:n]
            part.log_().exp_().log_().exp_()
            left -= n
        if on.type == "cuda":
            torch.cuda.synchronize(on)
        best = min(best, clock() - t0)
    return best


def physics_seconds(holder: nn.Module, t_inference: float, sample: int = 4) -> float:
    """Time of AIHWKit's own noise-model calls (``apply_programming_noise`` + ``apply_drift_noise``)
    on every converted matrix's weights, estimated from ``sample`` matrices per stack."""
    from romer_aihwkit.analog.stacked import AnalogStack

    total = 0.0
    for stack in (m for m in holder.modules() if isinstance(m, AnalogStack)):
        nm = stack.recipe.noise_model
        k = min(sample, len(stack))
        t0 = time.perf_counter()
        for m in range(k):
            w = stack.reference(m).float()
            programmed, nu = nm.apply_programming_noise(w)
            nm.apply_drift_noise(programmed, nu, t_inference)
        total += (time.perf_counter() - t0) * sum(stack.analog) / k
    return total


def _sync(fn, on):
    if on.type != "cuda":
        return fn

    def synced():
        fn()
        torch.cuda.synchronize(on)

    return synced


def measure(shape: str, dtype: torch.dtype, device: str, engine: str, tokens: int, long_tokens: int, repeat: int,
            on: torch.device | None = None, setup_only: bool = False) -> dict:
    import romer_aihwkit as ra

    cfg = ra.load_device_config(device)
    on = on or torch.device("cpu")
    gc.collect()
    cuda = on.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(on)
    holder = build_block(shape, dtype).to(on)
    digital_bytes = held_bytes(holder)
    n_conv = converted_weights(holder)
    hidden = holder.config.hidden_size
    x = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(1)).to(on, dtype)
    x_long = torch.randn(1, long_tokens, hidden, generator=torch.Generator().manual_seed(2)).to(on, dtype)

    impl_times: dict = {}
    fastest, digital_long = "eager", float("nan")
    with torch.no_grad():
        per_pair = sum(p[0].numel() for n, p in holder.mlp.named_parameters() if n.endswith(("gate_up_proj", "down_proj")))
        gather_bytes = tokens * getattr(holder.config, "num_experts_per_tok", 8) * per_pair * x.element_size()
        for impl in () if setup_only else ("eager", "batched_mm", "grouped_mm"):
            if impl == "batched_mm" and gather_bytes > 4 * 2**30:  # it gathers every selected expert's weights
                impl_times[impl] = f"skipped: would gather {gather_bytes / 2**30:.0f} GiB of expert weights"
                continue
            try:
                set_experts_implementation(holder, impl)
                impl_times[impl] = _common.median_times({impl: _sync(lambda: holder.mlp(x), on)}, repeat=2, warmup=1)[impl]
            except Exception as exc:  # an implementation unavailable on this machine
                impl_times[impl] = f"unavailable: {type(exc).__name__}"
        if not setup_only:
            fastest = min((k for k, v in impl_times.items() if isinstance(v, float)), key=lambda k: impl_times[k])
            set_experts_implementation(holder, fastest)
            t0 = time.perf_counter()
            _sync(lambda: holder.mlp(x_long), on)()
            digital_long = time.perf_counter() - t0
        digital_ref = holder.mlp(x).float()
    floor = floor_seconds(n_conv, on)
    # CPU time of this thread too (torch runs single-threaded here): on a shared machine it does not
    # count the time other jobs hold the cores, so the ratios below are also given by CPU time
    floor_cpu = floor_seconds(n_conv, on, clock=time.thread_time) if on.type == "cpu" else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(on)
    release_free_memory()
    before = torch.cuda.memory_allocated(on) if cuda else rss()  # the digital layer is alive here

    with PeakRSS() as peak:
        t0 = time.perf_counter()
        ra.convert_to_analog_moe(holder, cfg, engine=engine, progress=False)
        t_convert = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.thread_time()
        holder.program_analog_weights(seed=0, t_inference=cfg.t_inference, progress=False)
        if cuda:
            torch.cuda.synchronize(on)
        t_program, c_program = time.perf_counter() - t0, time.thread_time() - c0
    if cuda:
        peak.peak = torch.cuda.max_memory_allocated(on)
    gc.collect()
    # the documented two-call flow on the same layer: program (recorded), then drift (one pass)
    t0, c0 = time.perf_counter(), time.thread_time()
    holder.program_analog_weights(seed=0, progress=False)
    t_two_program = time.perf_counter() - t0
    t0 = time.perf_counter()
    holder.drift_analog_weights(cfg.t_inference, progress=False)
    if cuda:
        torch.cuda.synchronize(on)
    t_two_drift, c_two = time.perf_counter() - t0, time.thread_time() - c0
    physics = physics_seconds(holder, cfg.t_inference) if engine == "stacked" else None
    held = held_bytes(holder)
    release_free_memory()
    rss_held = (torch.cuda.memory_allocated(on) if cuda else rss()) - before + digital_bytes
    with torch.no_grad():
        analog_out = holder.mlp(x).float()
    if setup_only:
        both = {"analog": float("nan"), "digital": float("nan")}
    else:  # the digital forward again, interleaved with the analog one: same load for both
        digital = build_block(shape, dtype).to(on)
        set_experts_implementation(digital, fastest)
        with torch.no_grad():
            both = _common.median_times({"analog": _sync(lambda: holder.mlp(x), on),
                                         "digital": _sync(lambda: digital.mlp(x), on)}, repeat=repeat, warmup=1)
    rel_err = float((analog_out - digital_ref).norm() / digital_ref.norm())
    setup = t_convert + t_program
    result = {
        "shape": shape, "dtype": str(dtype).replace("torch.", ""), "device": cfg.name, "engine": engine,
        "converted_weights": n_conv, "tokens": tokens, "long_tokens": long_tokens,
        "digital_impl_seconds": impl_times, "digital_impl": fastest,
        "digital_forward_s": both["digital"], "digital_forward_long_s": digital_long,
        "analog_forward_s": both["analog"], "forward_ratio": both["analog"] / both["digital"],
        "floor_ops": FLOOR_OPS, "floor_s": floor,
        "convert_s": t_convert, "program_drift_s": t_program, "setup_s": setup,
        "setup_over_floor": setup / floor if floor > 0 else None,
        "program_drift_over_floor": t_program / floor if floor > 0 else None,
        "two_call_program_s": t_two_program, "two_call_drift_s": t_two_drift,
        "two_call_over_one_call": (t_two_program + t_two_drift) / t_program,
        "floor_cpu_s": floor_cpu, "program_drift_cpu_s": c_program, "two_call_cpu_s": c_two,
        "program_drift_over_floor_cpu": c_program / floor_cpu if floor_cpu else None,
        "two_call_over_one_call_cpu": c_two / c_program if c_program > 0 else None,
        "aihwkit_physics_s": physics,
        "setup_over_physics": setup / physics if physics else None,
        "setup_forward_equivalents": setup / both["digital"],
        "setup_forward_equivalents_long": setup / digital_long,
        "digital_bytes": digital_bytes, "held_bytes": held, "held_ratio": held / digital_bytes,
        "rss_held_ratio": rss_held / digital_bytes, "peak_rss_ratio": (peak.peak - before + digital_bytes) / digital_bytes,
        "relative_output_error": rel_err,
    }
    return result


def forward_interleaved(shape: str, dtype: torch.dtype, devices: list[str], tokens: int, repeat: int,
                        threads: list[int], on: torch.device | None = None) -> list[dict]:
    """Forward of one layer under each of ``devices`` (stacked engine, programmed and drifted) against the
    digital layer, all timed interleaved in one run, for each torch thread count in ``threads``."""
    import romer_aihwkit as ra

    on = on or torch.device("cpu")
    digital = build_block(shape, dtype).to(on)
    x = torch.randn(1, tokens, digital.config.hidden_size, generator=torch.Generator().manual_seed(1)).to(on, dtype)
    impl = {}
    with torch.no_grad():
        for name in ("eager", "batched_mm", "grouped_mm"):
            try:
                set_experts_implementation(digital, name)
                impl[name] = _common.median_times({name: _sync(lambda: digital.mlp(x), on)}, repeat=2, warmup=1)[name]
            except Exception:  # an implementation unavailable here
                continue
    fastest = min(impl, key=lambda k: impl[k])
    set_experts_implementation(digital, fastest)
    fns = {"digital": _sync(lambda: digital.mlp(x), on)}
    for device in devices:
        # the forward's cost does not depend on the conductances: program without the noise model (minutes
        # less on a CPU), with the device's whole periphery and forward non-idealities
        cfg = ra.load_device_config(device).replace(noise_model="none", g_max=None, prog_noise_scale=1.0,
                                                    read_noise_scale=1.0, drift_scale=1.0, allowed_t_inference=None)
        holder = build_block(shape, dtype).to(on)
        t0 = time.perf_counter()
        ra.convert_to_analog_moe(holder, cfg, engine="stacked")
        holder.program_analog_weights(seed=0, t_inference=cfg.t_inference)
        print(f"{shape} {dtype}: {device} converted and programmed in {time.perf_counter() - t0:.0f} s", flush=True)
        fns[device] = _sync(lambda h=holder: h.mlp(x), on)
    out = []
    for n in threads:
        torch.set_num_threads(n)
        with torch.no_grad():
            times = _common.median_times(fns, repeat=repeat, warmup=1)
        for device in devices:
            out.append({"shape": shape, "dtype": str(dtype).replace("torch.", ""), "device": device, "threads": n,
                        "tokens": tokens, "digital_impl": fastest, "digital_forward_s": times["digital"],
                        "analog_forward_s": times[device], "forward_ratio": times[device] / times["digital"],
                        "load_average": _load_average()})
            print(out[-1], flush=True)
    return out


def _load_average() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None
def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", default=["olmoe-1b-7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite"])
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--device", default="pcm")
    parser.add_argument("--engines", nargs="*", default=["stacked"])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--long-tokens", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default: on a shared 2-core box OpenMP threads contend and "
                             "small elementwise ops become many times slower, for the digital and analog forward alike")
    parser.add_argument("--torch-device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--out", default="bench_real_shapes")
    parser.add_argument("--forward-devices", nargs="*", default=None,
                        help="forward only: time the layer under each of these device configs and the digital layer "
                             "interleaved in one run (e.g. pcm aihwkit-standard), for each --forward-threads count")
    parser.add_argument("--forward-threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--setup-only", action="store_true",
                        help="measure the floor, conversion and programming only (no forward timings)")
    args = parser.parse_args()
    if args.forward_devices:
        rows, results = [], []
        for shape in args.shapes:
            for dtype_name in args.dtypes:
                for r in forward_interleaved(shape, getattr(torch, dtype_name), args.forward_devices, args.tokens,
                                             args.repeat, args.forward_threads, torch.device(args.torch_device)):
                    results.append(r)
                    rows.append([shape, r["dtype"], r["device"], r["threads"], f"{r['digital_forward_s'] * 1e3:.0f}",
                                 f"{r['analog_forward_s'] * 1e3:.0f}", f"{r['forward_ratio']:.2f}",
                                 f"{r['load_average']:.1f}" if r["load_average"] is not None else "-"])
                    _common.write_json(f"{args.out}_forward", {"settings": vars(args), "machine": _common.machine(),
                                                               "results": results})
        _common.table(f"Forward of one MoE layer, {args.tokens} tokens, interleaved with the digital layer",
                      ["shape", "dtype", "device", "threads", "digital ms", "analog ms", "ratio", "load"], rows)
        return
    torch.set_num_threads(args.threads)
    results, rows = [], []
    for shape in args.shapes:
        for dtype_name in args.dtypes:
            for engine in args.engines:
                r = measure(shape, getattr(torch, dtype_name), args.device, engine, args.tokens, args.long_tokens,
                            args.repeat, torch.device(args.torch_device), setup_only=args.setup_only)
                r["torch_device"] = args.torch_device
                results.append(r)
                print({k: v for k, v in r.items() if k != "digital_impl_seconds"}, flush=True)
                rows.append([shape, r["dtype"], engine, f"{r['setup_s']:.1f}", f"{r['setup_over_floor']:.2f}",
                             f"{r['program_drift_over_floor']:.2f} ({_fmt(r['program_drift_over_floor_cpu'])} cpu)",
                             f"{r['two_call_over_one_call']:.2f} ({_fmt(r['two_call_over_one_call_cpu'])} cpu)",
                             f"{r['setup_over_physics']:.2f}" if r["setup_over_physics"] else "-",
                             f"{r['setup_forward_equivalents']:.1f} / {r['setup_forward_equivalents_long']:.2f}",
                             f"{r['forward_ratio']:.2f}", f"{r['held_ratio']:.2f}", f"{r['peak_rss_ratio']:.2f}"])
                _common.write_json(args.out, {"settings": vars(args), "machine": _common.machine(), "results": results})
    _common.table(f"One MoE layer in real shapes ({args.device}), random weights",
                  ["shape", "dtype", "engine", "setup s", "setup / floor", "program+drift / floor",
                   "two-call / one-call", "setup / AIHWKit physics", f"setup in fwd eq ({args.tokens} / {args.long_tokens} tok)",
                   "fwd ratio", "held / digital", "peak RSS / digital"], rows)


if __name__ == "__main__":
    main()
