"""PyTorch's fused Adam and AdamW, stepped on request: the peer of `lamb bench --what optimizers
--torch PYTHON`, which embeds this file and runs it with `PYTHON -c`.

Why not ../shared/tools/torch_optim_step.py itself: that script times both optimizers once per
process on the BERT-base set only. Alternating short blocks of steps with ours needs the torch
state kept between blocks (one interpreter, no re-import or re-allocation per block) and the
seed-CNN set too. The setup is the same: torch.optim.Adam / AdamW(lr=1e-3, fused=True), gradients
randn*1e-3, parameters randn*0.02, one first step untimed, `torch.set_num_threads(THREADS)`.

argv: THREADS [SHARED_TOOLS_DIR]. With SHARED_TOOLS_DIR, the BERT-base shapes the command sends
are checked against bert_shapes.bert_base_shapes() from that directory.

Protocol: one JSON object per line. Replies first {"ready": true, "torch": VERSION, "threads": N}
(or {"error": MESSAGE, "missing_module": NAME} and exit status 3). Requests:
  {"cmd": "set", "label": L, "shapes": [[...], ...], "bert": BOOL} -> {"params": N, "checked": BOOL}
  {"cmd": "time", "opt": "adam"|"adamw", "steps": K}  -> {"times": [seconds, ...], "minflt": N}
(minflt: the process's minor page faults during the K steps).
  {"cmd": "quit"}
Any failure replies {"error": MESSAGE}.
"""
import json
import resource
import sys
import time


def reply(**obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


try:
    import torch
except ImportError as e:  # ModuleNotFoundError names the module; other import errors do not
    reply(error=f"cannot import torch: {e}", missing_module=getattr(e, "name", None))
    sys.exit(3)

threads = int(sys.argv[1])
tools = sys.argv[2] if len(sys.argv) > 2 else ""
torch.set_num_threads(threads)
torch.manual_seed(0)
reply(ready=True, torch=torch.__version__, threads=torch.get_num_threads())

MAKERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
}
opts = {}
for line in sys.stdin:
    try:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "set":
            shapes = [tuple(int(d) for d in s) for s in req["shapes"]]
            checked = False
            if req.get("bert") and tools:
                sys.path.insert(0, tools)
                from bert_shapes import bert_base_shapes

                want = [tuple(s) for s in bert_base_shapes()]
                if want != shapes:
                    raise ValueError(f"BERT-base shapes differ from {tools}/bert_shapes.py")
                checked = True
            opts.clear()
            grads = [torch.randn(s) * 1e-3 for s in shapes]
            for name, make in MAKERS.items():
                ps = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
                for p, g in zip(ps, grads):
                    p.grad = g
                opt = make(ps)
                opt.step()  # allocates the state, untimed
                opts[name] = opt
            reply(params=sum(g.numel() for g in grads), checked=checked)
        elif cmd == "time":
            opt = opts[req["opt"]]
            times = []
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(int(req["steps"])):
                t = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            reply(times=times, minflt=faults)
        elif cmd == "quit":
            break
        else:
            raise ValueError(f"unknown command {cmd!r}")
    except Exception as e:  # reported to the command, which stops
        reply(error=f"{type(e).__name__}: {e}")
