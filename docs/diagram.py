"""Draw docs/img/timing.png: the timing contract, as the real Judge decides it.

The scenario is played through heartbeat's own pure core on a fake clock, so the picture shows
what the code does, not what someone drew: a kernel that starts late (inside first_beat), beats,
loses one ping (no death: the next is answered), a manager stall that is forgiven, then a
kernel that dies and is declared dead when the first ping after its last reply has gone
unanswered for time_to_dead.

    python docs/diagram.py [OUT.png]   # needs matplotlib; default docs/img/timing.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from heartbeat import Beat, Dead, Judge, Ping, Stall

TTD, FIRST_BEAT = 1.0, 2.0
BIND_AT, DIE_AT = 1.3, 6.6
STALL = (4.1, 5.6)  # the manager's loop is frozen
LOST_AT = 3.0  # the ping sent then is lost on the way
RTT = 0.05


def play() -> dict[str, list[float]]:
    judge = Judge(TTD, FIRST_BEAT)
    marks: dict[str, list[float]] = {"ping": [], "lost": [], "beat": [], "stall": [], "dead": []}
    pending: list[tuple[float, int]] = []

    def handle(now: float, events: list[object]) -> None:
        for e in events:
            if isinstance(e, Ping) and now == LOST_AT:
                marks["lost"].append(now)
            elif isinstance(e, Ping):
                marks["ping"].append(now)
                reaches = max(now, BIND_AT)
                if reaches < DIE_AT:
                    pending.append((reaches + RTT, e.token))
            elif isinstance(e, Beat):
                marks["beat"].append(now)
            elif isinstance(e, Stall):
                marks["stall"].append(now)
            elif isinstance(e, Dead):
                marks["dead"].append(now)

    def free(t: float) -> float:
        return STALL[1] if STALL[0] <= t < STALL[1] else t

    handle(0.0, judge.start(0.0))
    while not marks["dead"]:
        due = judge.next_deadline
        assert due is not None
        fire = free(due)
        for arrival, token in sorted(p for p in pending if free(p[0]) <= fire):
            pending.remove((arrival, token))
            handle(free(arrival), judge.on_reply(free(arrival), token))
        handle(fire, judge.on_timer(fire))
    return marks


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marks = play()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.axvspan(0, FIRST_BEAT, color="tab:green", alpha=0.12, label="first_beat grace")
    ax.axvspan(*STALL, color="tab:orange", alpha=0.18, label="manager stalled (forgiven)")
    ax.axvline(BIND_AT, color="tab:green", ls=":", lw=1)
    ax.text(BIND_AT, 2.55, " kernel binds", color="tab:green", fontsize=8)
    ax.axvline(DIE_AT, color="tab:red", ls=":", lw=1)
    ax.text(DIE_AT, 2.55, " kernel dies", color="tab:red", fontsize=8)
    ax.scatter(marks["ping"], [2] * len(marks["ping"]), marker="|", s=200, label="ping sent")
    ax.scatter(marks["lost"], [2] * len(marks["lost"]), marker="x", s=60, label="ping lost")
    ax.scatter(marks["beat"], [1] * len(marks["beat"]), marker="|", s=200, label="reply read")
    last = max(marks["beat"])
    dead = marks["dead"][0]
    unanswered = min(t for t in marks["ping"] if t >= last)
    ax.annotate(
        "",
        xy=(dead, 0.45),
        xytext=(unanswered, 0.45),
        arrowprops={"arrowstyle": "<->", "color": "tab:red"},
    )
    ax.plot([last, unanswered], [0.45, 0.45], color="tab:red", ls=":", lw=1)
    ax.text(
        dead,
        0.12,
        "time_to_dead: the first ping after the last reply, unanswered",
        ha="right",
        color="tab:red",
        fontsize=8,
    )
    ax.scatter([dead], [0.45], marker="X", color="tab:red", s=90, zorder=3, label="declared dead")
    ax.set_yticks([1, 2], ["replies", "pings"])
    ax.set_ylim(0, 2.9)
    ax.set_xlim(-0.2, dead + 0.6)
    ax.set_xlabel("seconds since start()  (time_to_dead 1 s, first_beat 2 s, ping every 0.5 s)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=7, fontsize=8, frameon=False)
    fig.tight_layout()
    default = Path(__file__).parent / "img" / "timing.png"
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
