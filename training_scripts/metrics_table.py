"""The brief metrics as a two-column text table, as lddetr-train, lddetr-eval and lddetr-predict-split print them."""


def format_table(metrics: dict[str, float]) -> str:
    width = max(len("metric"), *(len(name) for name in metrics))
    lines = [f"{'metric':<{width}}  {'value':>7}", f"{'-' * width}  {'-' * 7}"]
    lines += [f"{name:<{width}}  {value:>7.2f}" for name, value in metrics.items()]
    return "\n".join(lines)
