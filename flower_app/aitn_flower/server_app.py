"""The demand server's Flower ServerApp: FedAvg over nodes, the global model scored every round.

Each round prints one `AITN-ROUND {json}` line: the score on the demand server's own validation data,
the nodes and device updates that took part, and the bytes moved (update items the devices sent,
plus the model each updating device fetched and the model Flower sent to and from each node).
"""

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


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    model, width = str(rc["model"]), float(rc["width"])
    out = Path(str(rc["out-dir"])) if rc["out-dir"] else None
    initial = initial_weights(model, width)
    model_bytes = len(weights_codec.encode(initial))
    log: list[dict] = []
    last_train: dict = {}
    t0 = time.monotonic()

    def sum_metrics(records: list, _weight_key: str) -> MetricRecord:
        """Per round: nodes that answered, and the sums over them (examples, device updates, bytes)."""
        rows = [next(iter(r.metric_records.values())) for r in records]
        m = {"nodes": len(rows), "num-examples": sum(int(r["num-examples"]) for r in rows),
             "updates": sum(int(r["updates"]) for r in rows),
             "update-bytes": sum(int(r["update-bytes"]) for r in rows),
             "slowest-node-s": max(float(r["seconds"]) for r in rows)}
        last_train.clear()
        last_train.update(m)
        return MetricRecord(m)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        s = score(model, width, arrays.to_numpy_ndarrays())
        row = {"round": server_round, "seconds": round(time.monotonic() - t0, 2), "loss": round(s.loss, 5),
               "accuracy": None if s.accuracy is None else round(s.accuracy, 4), "validation_samples": s.samples}
        if server_round > 0 and last_train:
            row.update({f"train_{k}": v for k, v in last_train.items()})
            row["bytes_moved"] = (last_train["update-bytes"] + last_train["updates"] * model_bytes
                                  + 2 * last_train["nodes"] * model_bytes)
        log.append(row)
        print("AITN-ROUND " + json.dumps(row, sort_keys=True), flush=True)
        return MetricRecord({k: v for k, v in row.items() if isinstance(v, (int, float))})

    n = int(rc["min-nodes"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n,
                      train_metrics_aggr_fn=sum_metrics)
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=int(rc["num-server-rounds"]),
        timeout=float(rc["round-seconds"]) + 120.0,
        train_config=ConfigRecord({"min-updates": int(rc["min-updates"]), "round-seconds": float(rc["round-seconds"])}),
        evaluate_fn=evaluate)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "global.aitw").write_bytes(weights_codec.encode(result.arrays.to_numpy_ndarrays()))
        (out / "rounds.json").write_text(json.dumps(log, indent=1, sort_keys=True) + "\n")
    print("AITN-DONE " + json.dumps({"rounds": len(log) - 1, "final": log[-1] if log else None}), flush=True)
