"""The demand server's Flower ServerApp: FedAvg over nodes, the global model scored every round."""

import json
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from agent.demand.evaluate import score
from agent.train import weights as weights_codec
from agent.train.client import initial_weights

app = ServerApp()


def sum_metrics(records: list, _weight_key: str) -> MetricRecord:
    """Per round: nodes that answered, and the sums over them (examples, device updates); slowest node."""
    rows = [next(iter(r.metric_records.values())) for r in records]
    return MetricRecord({"nodes": len(rows), "num-examples": sum(int(m["num-examples"]) for m in rows),
                         "updates": sum(int(m["updates"]) for m in rows),
                         "slowest-node-s": max(float(m["seconds"]) for m in rows)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    model, width = str(rc["model"]), float(rc["width"])
    out = Path(str(rc["out-dir"])) if rc["out-dir"] else None
    log: list[dict] = []
    t0 = time.monotonic()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        s = score(model, width, arrays.to_numpy_ndarrays())
        row = {"round": server_round, "seconds": round(time.monotonic() - t0, 2), "loss": round(s.loss, 5),
               "accuracy": None if s.accuracy is None else round(s.accuracy, 4), "validation_samples": s.samples}
        log.append(row)
        print("AITN-ROUND " + json.dumps(row, sort_keys=True), flush=True)
        return MetricRecord({k: v for k, v in row.items() if v is not None})

    n = int(rc["min-nodes"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n,
                      train_metrics_aggr_fn=sum_metrics)
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord(initial_weights(model, width)), num_rounds=int(rc["num-server-rounds"]),
        timeout=float(rc["round-seconds"]) + 120.0,
        train_config=ConfigRecord({"min-updates": int(rc["min-updates"]), "round-seconds": float(rc["round-seconds"])}),
        evaluate_fn=evaluate)
    train = {int(k): dict(v) for k, v in result.train_metrics_clientapp.items()}
    for row in log:
        row.update({f"train_{k}": v for k, v in train.get(row["round"], {}).items()})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "global.aitw").write_bytes(weights_codec.encode(result.arrays.to_numpy_ndarrays()))
        (out / "rounds.json").write_text(json.dumps(log, indent=1, sort_keys=True) + "\n")
    print("AITN-DONE " + json.dumps({"rounds": len(log) - 1, "final": log[-1] if log else None}), flush=True)
