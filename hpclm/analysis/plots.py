"""Figures of timing records (matplotlib, Agg backend, imported only when plots are asked for).

- breakdown.png: stacked mean time per step of each region, one bar per run;
- loss.png: loss against step, wall time and cumulative bytes sent per rank, one line per run;
- step_time_<run>.png: heat map of step time per rank (rows) and step (columns), one per run;
- all-reduce sweeps of `hpclm bench collectives` (`collectives`): median time and busbw against
  message size per algorithm, the cost model's predictions dashed.
"""
import numpy as np

from hpclm.timing import schema


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _loss(record):
    loss = record.per_step["loss"]
    return loss if np.any(np.isfinite(loss)) else np.nanmean(record.per_rank["loss"], axis=1)


def breakdown(path, records, summaries, skip_steps):
    plt = _pyplot()
    regions = [r for r in schema.REGIONS if r != schema.BACKGROUND_COMM_REGION]
    regions += sorted({r for rec in records for r in rec.times} - set(schema.REGIONS))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(records) + 3), 4.5))
    bottom = np.zeros(len(records))
    for region in regions + ["other"]:
        if region == "other":
            heights = np.array([rec.per_rank["step_time"][skip_steps:].mean() for rec in records]) - bottom
        else:
            heights = np.array([rec.times[region][skip_steps:].mean() if region in rec.times else 0.0
                                for rec in records])
        if np.any(heights > 0):
            ax.bar([s.name for s in summaries], np.maximum(heights, 0) * 1e3, bottom=bottom * 1e3, label=region)
            bottom += np.maximum(heights, 0)
    ax.set_ylabel("mean time per step per rank (ms)")
    ax.set_title("where the step time goes")
    ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)


def _smooth(values, window):
    """Trailing moving average (the first points average what there is)."""
    if window <= 1:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    lo = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(values) + 1) - lo)


def loss_curves(path, records, summaries):
    """Training loss (moving average) against step, wall time and cumulative MB sent (log scale)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    colors = plt.get_cmap("tab20" if len(records) > 10 else "tab10").colors
    window = max(1, max(r.n_steps for r in records) // 80)
    for i, (record, summary) in enumerate(zip(records, summaries)):
        loss = _smooth(_loss(record), window)
        sent = np.cumsum(record.per_rank["bytes_sent"].mean(axis=1))
        style = dict(label=f"{summary.name} (P={summary.world_size})", color=colors[i % len(colors)], lw=1.2)
        axes[0].plot(record.step, loss, **style)
        axes[1].plot(record.per_step["elapsed"], loss, **style)
        axes[2].plot(sent / 1e6, loss, **style)
    for ax, xlabel in zip(axes, ("step", "wall time (s)", "MB sent per rank (cumulative, log scale)")):
        ax.set_xlabel(xlabel)
    axes[2].set_xscale("symlog", linthresh=1.0)
    axes[0].set_ylabel(f"training loss ({window}-step moving average)")
    axes[2].legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)


def step_time_heatmap(path, record, summary, skip_steps):
    """Colour scale from the counted steps, so that a slow warm-up step does not wash out the rest."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    step_ms = record.per_rank["step_time"] * 1e3
    fig, ax = plt.subplots(figsize=(10, max(2.5, min(12, 0.25 * record.world_size + 2))))
    image = ax.imshow(step_ms.T, aspect="auto", interpolation="nearest",
                      vmin=step_ms[skip_steps:].min(), vmax=step_ms[skip_steps:].max(),
                      extent=(record.step[0] - 0.5, record.step[-1] + 0.5, record.world_size - 0.5, -0.5))
    fig.colorbar(image, ax=ax, label="step time (ms)", extend="max")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("rank")
    ax.set_title(f"{summary.name}: step time per rank")
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)


def write_all(out_dir, records, summaries, skip_steps):
    """Write every figure into `out_dir`; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "breakdown.png", out_dir / "loss.png"]
    breakdown(paths[0], records, summaries, skip_steps)
    loss_curves(paths[1], records, summaries)
    for record, summary in zip(records, summaries):
        paths.append(out_dir / f"step_time_{summary.name}.png")
        step_time_heatmap(paths[-1], record, summary, skip_steps)
    return paths


def collectives(path, rows, title):
    """rows: `hpclm bench collectives` size-sweep rows (bytes, algorithm, median_us, busbw_GBps,
    model_us). Left: median time against size (log-log), model dashed in the same colour; right: busbw."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = plt.get_cmap("tab10").colors
    for i, name in enumerate(dict.fromkeys(r["algorithm"] for r in rows)):
        own = sorted((r for r in rows if r["algorithm"] == name), key=lambda r: r["bytes"])
        sizes = np.array([r["bytes"] for r in own], dtype=float)
        color = colors[i % len(colors)]
        left.plot(sizes, [r["median_us"] for r in own], "o-", ms=3, color=color, label=name)
        model = [(n, r["model_us"]) for n, r in zip(sizes, own) if r.get("model_us")]
        if model and name != "mpi":
            left.plot(*zip(*model), "--", color=color, lw=1, alpha=0.8)
        right.plot(sizes, [r["busbw_GBps"] for r in own], "o-", ms=3, color=color, label=name)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message size (bytes)")
        ax.grid(True, which="major", alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("median time (us); dashed: cost model")
    right.set_ylabel("busbw (GB/s) = algbw * 2(P-1)/P")
    right.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(title)
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
