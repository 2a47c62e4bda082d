#!/usr/bin/env python3
"""Plots (gnuplot) and summary tables (Markdown, on stdout) for restarts, side by side.

  plot_restarts.py failures [--out PREFIX] JSON...
      JSON: bench/peer_restart.sh's files (loadgen's JSON with a timeline and the restarts).
      Per (connections, mode) found among them:
        PREFIX-failures-MODE-CONNECTIONS.png  failed requests per restart, one bar per peer
                                              (hatched part: hard failures)
        PREFIX-timeline-MODE-CONNECTIONS.png  ok responses per second and failures per
                                              timeline bucket over the run, per peer
      and PREFIX-failures.json with every figure. PREFIX defaults to the report the JSON
      files belong to (bench/results/peers-restart-DATE[-TIME]).
  plot_restarts.py rss --out PNG JSON...
      JSON: bench/restart_metrics.py --json files. One panel per server: RSS of old + new
      (all of the server's processes, summed) over time through the restarts, every process
      alone in grey, the signals as dashed lines.

Failures per restart: loadgen counts outcomes per timeline bucket (50 ms by default) at the
moment each became known; a bucket belongs to restart i when it ends after signal i and no
later signal came before its end, so restart i holds the failures from signal i to signal
i+1 (the last one: to the end of the run), at the timeline's resolution. Failures before the
first signal are shown as "before" when there are any.
"""
import argparse, json, os, re, subprocess, sys

ORDER = ["endless", "tableflip", "grace", "nginx", "h2o"]
COLOR = {"endless": "#1b9e77", "tableflip": "#7570b3", "grace": "#e7298a", "nginx": "#d95f02",
         "h2o": "#66a61e"}
MODE_NAME = {"keepalive": "keep-alive", "close": "Connection: close"}


def color(name, i):
    return COLOR.get(name, ["#e6ab02", "#a6761d", "#666666", "#1f78b4"][i % 4])


def peer_key(name):
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def gnuplot(script):
    try:
        subprocess.run(["gnuplot"], input=script.encode(), check=True)
    except FileNotFoundError:
        sys.exit("plot_restarts: gnuplot is not installed (scripts/deps.sh gnuplot-nox)")


def datablock(name, rows):
    return f"${name} << EOD\n" + "".join(" ".join(str(v) for v in r) + "\n" for r in rows) + "EOD\n"


def q(s):  # a gnuplot single-quoted string
    return "'" + str(s).replace("'", "''") + "'"


# ---- failures per restart -------------------------------------------------------------------

def attribute(d):
    """-> (per slot: [ok, hard, race, {class: n}]), slot 0 = before the first signal."""
    tl = d["timeline"]
    w = tl["bucket_ms"]
    cols = tl["columns"]
    signals = sorted(r["sent_ms"] for r in d["restarts"] if r.get("sent_ms") is not None)
    n = d["run"]["restarts"]
    slots = [[0, 0, 0, {c: 0 for c in cols[1:]}] for _ in range(n + 1)]
    for k, b in enumerate(tl["buckets"]):
        end = (k + 1) * w
        slot = sum(1 for s in signals if s < end)
        s = slots[slot]
        s[0] += b[0]
        for c, v in zip(cols[1:], b[1:]):
            s[3][c] += v
            if c == "reset_reused":
                s[2] += v
            else:
                s[1] += v
    return slots


def failures(args):
    runs = {}
    for path in args.json:
        with open(path) as f:
            d = json.load(f)
        if "run" not in d or "timeline" not in d:
            print(f"plot_restarts: {path}: no run or timeline (an older peer_restart.sh or "
                  f"loadgen?), skipped", file=sys.stderr)
            continue
        r = d["run"]
        key = (r["mode"], r["connections"])
        if (key, r["peer"]) in runs:
            print(f"plot_restarts: two runs of {r['peer']} at {key}: keeping the later one",
                  file=sys.stderr)
            if runs[(key, r["peer"])][1]["run"]["finished"] > r["finished"]:
                continue
        runs[(key, r["peer"])] = (path, d)
    if not runs:
        sys.exit("plot_restarts: no usable JSON")
    prefix = args.out
    if not prefix:
        first_path, first = next(iter(runs.values()))
        r = first["run"]
        m = re.match(rf"(.*)-{re.escape(r['peer'])}-{r['mode']}-{r['connections']}-\d+\.json$",
                     first_path)
        prefix = m.group(1) if m else os.path.splitext(first_path)[0]
    groups = sorted({k for k, _ in runs}, key=lambda k: (k[1], k[0] != "keepalive", k[0]))
    out = {"attribution": "failures from signal i to signal i+1 (timeline buckets by their end)",
           "groups": []}
    pngs = []
    summary = {}
    print("## Failures per restart (from loadgen's timeline)")
    print()
    print("Each cell: hard failures + keep-alive race (reset_reused), counted from signal i to "
          "signal i+1 (the last: to the end of the run), at the timeline's resolution.")
    for key in groups:
        mode, conns = key
        peers = sorted((p for k, p in runs if k == key), key=peer_key)
        rows = {p: attribute(runs[(key, p)][1]) for p in peers}
        n = max(len(s) for s in rows.values()) - 1
        show_before = any(s[0][1] + s[0][2] for s in rows.values())
        first_slot = 0 if show_before else 1
        bw = 0.8 / len(peers)
        mode_name = MODE_NAME.get(mode, mode)
        title = f"{conns:,} {mode_name} clients"
        group = {"connections": conns, "mode": mode, "peers": []}
        print()
        print(f"### {title}")
        print()
        print("| peer | " + " | ".join(("before" if i == 0 else f"restart {i}")
                                       for i in range(first_slot, n + 1)) + " | total |")
        print("|---|" + "--:|" * (n + 2 - first_slot))
        blocks, plots, labels = [], [], []
        ymax = 0
        for j, p in enumerate(peers):
            slots = rows[p]
            d = runs[(key, p)][1]
            group["peers"].append({
                "peer": p, "json": os.path.basename(runs[(key, p)][0]),
                "signals_ms": [r.get("sent_ms") for r in d["restarts"]],
                "slots": [{"slot": "before" if i == 0 else i, "ok": s[0], "hard": s[1],
                           "race": s[2], "classes": s[3]} for i, s in enumerate(slots)]})
            hard = sum(s[1] for s in slots)
            race = sum(s[2] for s in slots)
            summary[(p, key)] = (hard, race)
            print(f"| {p} | " + " | ".join(f"{s[1]} + {s[2]}" for s in slots[first_slot:]) +
                  f" | {hard} + {race} |")
            data = []
            for i in range(first_slot, len(slots)):
                x = i + (j - (len(peers) - 1) / 2) * bw
                total = slots[i][1] + slots[i][2]
                ymax = max(ymax, total)
                data.append((f"{x:.4f}", total, slots[i][1]))
            blocks.append(datablock(f"d{j}", data))
            c = color(p, j)
            plots.append(f"$d{j} using 1:2 with boxes lc rgb {q(c)} title {q(p)}")
            plots.append(f"$d{j} using 1:3 with boxes fs pattern 4 border lc rgb 'black' "
                         f"lc rgb 'black' notitle")
            labels.append(f"$d{j} using 1:2:(sprintf('%d', $2)) with labels rotate by 90 left "
                          f"offset 0,0.4 font ',8' notitle")
        out["groups"].append(group)
        png = f"{prefix}-failures-{mode}-{conns}.png"
        xt = ", ".join(f"{q('before' if i == 0 else str(i))} {i}" for i in range(first_slot, n + 1))
        script = "".join(blocks) + f"""set terminal pngcairo noenhanced size 1100,520 font ',10'
set output {q(png)}
set title {q(f'Failed requests per restart: {title}, {n} restarts (hatched: hard failures; rest: keep-alive race)')}
set style fill solid 0.85 border -1
set boxwidth {bw * 0.92:.4f} absolute
set xtics ({xt}) scale 0
set xrange [{first_slot - 0.5}:{n + 0.5}]
set yrange [0:{max(ymax * 1.25, 1)}]
set ylabel 'failed requests (between this signal and the next)'
set xlabel 'restart'
set grid ytics
set key outside right top
plot {', '.join(plots + labels)}, NaN with boxes fs pattern 4 lc rgb 'black' title 'hard failures'
"""
        gnuplot(script)
        pngs.append(png)
        pngs.append(timeline_png(prefix, key, peers, runs, title))
    print()
    print("### Total over the run: hard + keep-alive race")
    print()
    print("| peer | " + " | ".join(f"{c:,} {MODE_NAME.get(m, m)}" for m, c in groups) + " |")
    print("|---|" + "--:|" * len(groups))
    for p in sorted({p for p, _ in summary}, key=peer_key):
        print(f"| {p} | " + " | ".join(
            "%d + %d" % summary[(p, k)] if (p, k) in summary else "—" for k in groups) + " |")
    print()
    print("Plots: " + ", ".join(f"`{os.path.basename(x)}`" for x in pngs) + ".")
    with open(prefix + "-failures.json", "w") as f:
        json.dump(out, f, indent=1)
    print(f"plot_restarts: wrote {prefix}-failures.json and {len(pngs)} PNG(s)", file=sys.stderr)


def timeline_png(prefix, key, peers, runs, title):
    mode, conns = key
    png = f"{prefix}-timeline-{mode}-{conns}.png"
    blocks, ok_plots, fail_plots, arrows = [], [], [], []
    t_max, f_max = 1.0, 0
    for j, p in enumerate(peers):
        d = runs[(key, p)][1]
        tl = d["timeline"]
        w = tl["bucket_ms"]
        rows = []
        for k, b in enumerate(tl["buckets"]):
            failed = sum(b[1:])
            f_max = max(f_max, failed)
            t_max = max(t_max, (k + 1) * w / 1000)
            rows.append((f"{(k + 0.5) * w / 1000:.3f}", f"{b[0] * 1000 / w:.0f}",
                         failed if failed else "NaN"))
        blocks.append(datablock(f"t{j}", rows))
        c = color(p, j)
        ok_plots.append(f"$t{j} using 1:2 with steps lc rgb {q(c)} lw 1.5 title {q(p)}")
        fail_plots.append(f"$t{j} using 1:3 with points pt 7 ps 0.7 lc rgb {q(c)} title {q(p)}")
        if j == 0:
            for r in d["restarts"]:
                if r.get("sent_ms") is not None:
                    s = r["sent_ms"] / 1000
                    arrows.append(f"set arrow from {s:.3f}, graph 0 to {s:.3f}, graph 1 nohead "
                                  f"dt 2 lc rgb '#888888'")
    w = runs[(key, peers[0])][1]["timeline"]["bucket_ms"]
    arrow_text = "\n".join(arrows)
    script = "".join(blocks) + f"""set terminal pngcairo noenhanced size 1000,700 font ',10'
set output {q(png)}
set multiplot layout 2,1 title {q(f'{title}: through the restarts (dashed: signals, as sent to {peers[0]}; other peers within a few ms)')}
{arrow_text}
set grid
set key outside right
set lmargin 12
set rmargin 16
set xrange [0:{t_max:.3f}]
set xlabel 'seconds since the load started'
set ylabel 'ok responses / s'
set yrange [0:*]
plot {', '.join(ok_plots)}
set ylabel 'failed requests per {w} ms'
set logscale y
set yrange [0.8:{max(f_max * 2, 10)}]
{"set label 'no failed request' at graph 0.5, graph 0.5 center" if f_max == 0 else ""}
plot {', '.join(fail_plots)}
unset multiplot
"""
    gnuplot(script)
    return png


# ---- RSS through restarts -------------------------------------------------------------------

def rss(args):
    docs = []
    for path in args.json:
        with open(path) as f:
            d = json.load(f)
        if "rss" not in d:
            print(f"plot_restarts: {path}: no RSS samples, skipped", file=sys.stderr)
            continue
        docs.append(d)
    if not docs:
        sys.exit("plot_restarts: no usable JSON")
    docs.sort(key=lambda d: peer_key(d["server"]))
    panels = []
    for j, d in enumerate(docs):
        r = d["rss"]
        t0 = r["signals_ms"][0] if r["signals_ms"] else 0
        x = lambda t: f"{(t - t0) / 1000:.4f}"
        blocks = [datablock(f"s{j}", [(x(t), v) for t, v in r["total"]])]
        procs = []
        for k, (pid, p) in enumerate(sorted(r["processes"].items(), key=lambda kv: int(kv[0]))):
            blocks.append(datablock(f"s{j}p{k}", [(x(t), v) for t, v in p["samples"]]))
            procs.append(f"$s{j}p{k} using 1:2 with lines lc rgb '#bbbbbb' lw 1 "
                         + ("title 'each process'" if k == 0 else "notitle"))
        steady = d["steady_rss_kib"]
        peak = max((row["peak_rss_kib"] for row in d["restarts"]), default=0)
        arrows = "\n".join(
            f"set arrow from {x(s)}, graph 0 to {x(s)}, graph 1 nohead dt 2 lc rgb '#888888'"
            for s in r["signals_ms"])
        c = color(d["server"], j)
        title = (f"{d['server']}: steady {steady:,} KiB, peak old+new {peak:,} KiB "
                 f"({peak / steady:.2f}x steady)" if steady else d["server"])
        panels.append("".join(blocks) + f"""unset arrow
{arrows}
set title {q(title)}
set ylabel 'RSS, KiB'
set yrange [0:{max(peak, steady * 2.2) * 1.1:.0f}]
plot {', '.join(procs)}, $s{j} using 1:2 with lines lc rgb {q(c)} lw 2 title 'old + new (sum)', \\
  {steady * 2.2:.0f} with lines dt 3 lc rgb '#cc0000' title '2.2x steady (target)'
""")
    script = f"""set terminal pngcairo noenhanced size 1000,{240 * len(docs) + 40} font ',10'
set output {q(args.out)}
set multiplot layout {len(docs)},1 title 'RSS through {len(docs[0]["restarts"])} restarts (bench/restart_metrics.py, sampled every 2 ms; dashed: signals)'
set grid
set key outside right
set xlabel 'seconds since the first signal'
""" + "".join(panels) + "unset multiplot\n"
    gnuplot(script)
    print("| server | steady RSS | peak old+new | peak / steady | first answer from a new pid "
          "(median) | old process(es) gone (median) | longest probe gap | CPU per restart "
          "(median) | open fds: start → after N restarts |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    med = lambda v: sorted(v)[len(v) // 2] if v else None
    ms = lambda v: "—" if v is None else f"{v:.1f} ms"
    for d in docs:
        rows = d["restarts"]
        peak = max(row["peak_rss_kib"] for row in rows)
        cpu = med([row["cpu_ms"] for row in rows])
        f = d["fds"]
        print(f"| {d['server']} | {d['steady_rss_kib']:,} KiB | {peak:,} KiB | "
              f"{peak / d['steady_rss_kib']:.2f}x | "
              f"{ms(med([row['first_new_answer_ms'] for row in rows if row['first_new_answer_ms'] is not None]))} | "
              f"{ms(med([row['old_gone_ms'] for row in rows if row['old_gone_ms'] is not None]))} | "
              f"{d['probe']['longest_gap_ms']:.1f} ms | "
              f"{'< 10 ms' if cpu < 10 else f'{cpu:.0f} ms'} | "
              f"{f['start']} → {f['after_fd_restarts']} ({f['fd_restarts']}) |")
    print()
    print(f"Plot: `{os.path.basename(args.out)}`.")
    print(f"plot_restarts: wrote {args.out}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    sub = ap.add_subparsers(dest="what", required=True)
    f = sub.add_parser("failures", help="failures per restart, from bench/peer_restart.sh's JSON")
    f.add_argument("--out", help="prefix of the files written")
    f.add_argument("json", nargs="+")
    r = sub.add_parser("rss", help="RSS through restarts, from bench/restart_metrics.py --json")
    r.add_argument("--out", required=True, help="the PNG to write")
    r.add_argument("json", nargs="+")
    a = ap.parse_args()
    failures(a) if a.what == "failures" else rss(a)


if __name__ == "__main__":
    main()
