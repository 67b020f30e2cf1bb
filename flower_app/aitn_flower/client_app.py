"""The node's Flower ClientApp: run one group round on the node daemon, return the group's aggregate.

The SuperNode that runs it is started with --node-config "node-uri='coap://127.0.0.1:PORT'" (the node
daemon on the same machine). num-examples = the group's total samples, so for full-width synchronous
rounds Flower's FedAvg over nodes is exactly the sample-weighted mean over all devices.
"""

import asyncio

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from agent.node.bridge import group_round

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = msg.content["config"]
    tensors = msg.content["arrays"].to_numpy_ndarrays()
    res = asyncio.run(group_round(str(context.node_config["node-uri"]), tensors,
                                  min_updates=int(cfg["min-updates"]), seconds=float(cfg["round-seconds"])))
    metrics = MetricRecord({"num-examples": res.samples, "updates": res.updates, "group-round": res.round,
                            "update-bytes": res.bytes, "seconds": res.seconds})
    return Message(content=RecordDict({"arrays": ArrayRecord(res.tensors), "metrics": metrics}), reply_to=msg)
