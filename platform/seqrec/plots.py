"""Figures a user would rather look at than read: SDM's attention heads (paper Fig. 4) and its gate (§5.4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from seqrec import features as F
from seqrec.batch import collate
from seqrec.features import FeatureSpec


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pick_session(table: pa.Table, max_len: int = 12) -> int:
    """Index of the longest session no longer than ``max_len`` (readable axis labels)."""
    lens = table[F.SEQ_LEN].to_numpy()
    ok = np.where(lens <= max_len)[0]
    if len(ok) == 0:
        return int(np.argmin(lens))
    return int(ok[np.argmax(lens[ok])])


def plot_attention(model, table: pa.Table, spec: FeatureSpec, path: Path, row: int | None = None, title: str = "") -> Path:
    """Per-head self-attention of the session's last position over its items, plus user attention (Fig. 4)."""
    plt = _pyplot()
    row = pick_session(table) if row is None else row
    batch = collate(table.slice(row, 1), spec)
    det = model.explain(batch)
    t = int(batch.seq_len[0])
    side = spec.item_side[0].name if spec.item_side else None
    labels = [
        f"{int(batch.items[0, i])}" + (f"\n{side[:4]} {int(batch.seq[side][0, i])}" if side else "") for i in range(t)
    ]
    heads = det.self_attention[0, :, t - 1, :t].numpy()  # (H, T) last position's weights per head
    panels = [(heads, [f"head {h + 1}" for h in range(heads.shape[0])], "self-attention (eq. 8)")]
    if det.user_attention is not None:
        panels.append((det.user_attention[0, t - 1 : t, :t].numpy(), ["user"], "user attention (eq. 10)"))  # (1, T)
    ratios = [len(p[1]) + 0.6 for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 0.7 * t + 2.5), 0.45 * sum(ratios) + 2.2),
                             gridspec_kw={"height_ratios": ratios}, squeeze=False)
    for ax, (mat, names, what) in zip(axes[:, 0], panels):
        im = ax.imshow(mat, aspect="auto", cmap="Blues", vmin=0, vmax=max(float(mat.max()), 1e-6))  # own scale per panel
        ax.set_yticks(range(len(names)), names)
        ax.set_xticks(range(t), labels if ax is axes[-1, 0] else [""] * t, fontsize=7)
        ax.set_title(what, fontsize=9, loc="left")
        fig.colorbar(im, ax=ax, label="weight", fraction=0.03, pad=0.01)
    axes[-1, 0].set_xlabel(f"session items (item code{', ' + side + ' code' if side else ''}), oldest → newest")
    fig.suptitle(title or "SDM attention of the last position (paper Fig. 4)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def gate_values(model, table: pa.Table, spec: FeatureSpec, batch_size: int = 512) -> np.ndarray:
    """(U, D) gate G at the last position of every row (eq. 13); 1 = short-term, 0 = long-term."""
    out = []
    for start in range(0, table.num_rows, batch_size):
        batch = collate(table.slice(start, batch_size), spec)
        g = model.explain(batch).gate  # (B, T, D)
        if g is None:
            raise ValueError("the model has no gate: use an SDM with long_term=True and fusion='gated'")
        last = batch.seq_len - 1
        out.append(g[torch.arange(g.shape[0]), last].numpy())  # (B, D)
    return np.concatenate(out)


def plot_gate(model, table: pa.Table, spec: FeatureSpec, path: Path, title: str = "") -> Path:
    """Mean gate value per dimension over the rows, split by whether the long-term subset is empty."""
    plt = _pyplot()
    g = gate_values(model, table, spec)  # (U, D)
    has_lt = np.array([len(x) > 0 for x in table[F.long_term_col(F.ITEM_ID)].to_pylist()])
    d = np.arange(g.shape[1])
    fig, ax = plt.subplots(figsize=(max(6, g.shape[1] * 0.12 + 2), 3.5))
    for mask, name in ((has_lt, "with long-term behaviours"), (~has_lt, "without long-term behaviours")):
        if mask.any():
            ax.plot(d, g[mask].mean(0), marker=".", lw=1, label=f"{name} (n={int(mask.sum())}, mean {g[mask].mean():.2f})")
    ax.set_ylim(0, 1)
    ax.set_xlabel("dimension of o_t")
    ax.set_ylabel("mean gate G (1 = short-term)")
    ax.legend(fontsize=8)
    ax.set_title(title or "SDM fusion gate (eq. 13) at the last position")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sdm_figures(model, table: pa.Table, spec: FeatureSpec, out: Path, title: str = "") -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = title.replace(" ", "_").replace("=", "") or "sdm"
    paths = [plot_attention(model, table, spec, out / f"{stem}_attention.png", title=f"{title}: attention heads of one test session")]
    if getattr(model.config, "fusion", None) == "gated" and getattr(model.config, "long_term", False):
        paths.append(plot_gate(model, table, spec, out / f"{stem}_gate.png", title=f"{title}: fusion gate over the test users"))
    return paths
