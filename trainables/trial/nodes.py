"""Which Ray node a trial runs on, as its results report it."""

from __future__ import annotations

NODE_TYPE_LABEL = "node-type"  # cluster.yaml's node types carry it: `labels: {node-type: NAME}`


def node_fields() -> dict[str, str]:
    """This process's Ray node: ``node_id`` and, on a cluster whose node types label their
    nodes, ``node_type`` (``gpu_spot``, ``gpu_ondemand``)."""
    import ray

    context = ray.get_runtime_context()
    fields = {"node_id": context.get_node_id()}
    node_type = context.get_node_labels().get(NODE_TYPE_LABEL)
    if node_type:
        fields["node_type"] = node_type
    return fields
