#!/usr/bin/env python3
"""Turns a bench/run.sh Markdown report into JSON and PNG bar charts (gnuplot):
  bench/plot.py bench/results/speed-DATE.md      (or http1-DATE.md, tls-DATE.md)
writes speed-DATE.json, speed-DATE-rps.png (req/s per server and scenario, log scale) and
speed-DATE-cpu.png (server CPU µs per request; log scale when the scenarios span more than
30x, as a full TLS handshake against a keep-alive request does) next to it. A server that
was not measured in a scenario (noop and the Go peers in the TLS rows) has no bar there.
Reads reports from before the TLS scenarios too (no "CPU vs nginx" column, "vs noop")."""
import json, os, re, subprocess, sys, tempfile

src = sys.argv[1]
base = os.path.splitext(src)[0]


def num(s):
    return float(re.sub(r"[^0-9.]", "", s)) if re.search(r"[0-9]", s) else None


# The first table whose header starts "server | scenario | req/s"; columns by name.
rows, header = [], None
for line in open(src, encoding="utf-8"):
    line = line.strip()
    if not line.startswith("|"):
        if header is not None and rows:
            break
        continue
    cells = [c.strip() for c in line.strip("|").split("|")]
    if header is None:
        if cells[:3] == ["server", "scenario", "req/s"]:
            header = cells
        continue
    if cells[0].startswith("-") or len(cells) != len(header):
        continue
    r = dict(zip(header, cells))
    rows.append({"server": r["server"], "scenario": r["scenario"], "rps": num(r["req/s"]),
                 "vs_nginx": num(r["vs nginx"]), "p50": r["p50"], "p99": r["p99"],
                 "cpu_us_per_req": num(r["server CPU µs/req"]),
                 "cpu_vs_nginx": num(r["CPU vs nginx"]) if "CPU vs nginx" in r else None,
                 "vs_noop": num(r.get("CPU vs noop", r.get("vs noop", ""))),
                 "server_core_busy": r["server core busy"], "idle_rss": r["idle RSS"]})
if not rows:
    sys.exit("plot.py: no 'server | scenario | req/s' table in " + src)
json.dump({"source": os.path.basename(src), "rows": rows}, open(base + ".json", "w"), indent=1)

servers = list(dict.fromkeys(r["server"] for r in rows))
scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
with tempfile.TemporaryDirectory() as tmp:
    dat = os.path.join(tmp, "d.dat")
    for key, out, ylabel in (("rps", "-rps.png", "requests/s (tls-handshakes: handshakes/s)"),
                             ("cpu_us_per_req", "-cpu.png",
                              "server CPU µs per request (tls-handshakes: per handshake)")):
        values = [r[key] for r in rows if r[key]]
        log = key == "rps" or (values and max(values) > 30 * min(values))
        with open(dat, "w") as f:
            f.write("scenario " + " ".join('"%s"' % s for s in servers) + "\n")
            for sc in scenarios:
                vals = [next((r[key] for r in rows if r["server"] == s and r["scenario"] == sc), None)
                        for s in servers]
                f.write('"%s" ' % sc + " ".join("NaN" if not v else str(v) for v in vals) + "\n")
        cols = " , ".join("'%s' using %d:xtic(1) title columnheader(%d)" % (dat, i + 2, i + 2)
                          for i in range(len(servers)))
        script = f"""set terminal pngcairo size {max(900, 190 * len(scenarios))},480
set output '{base + out}'
set style data histograms
set style histogram cluster gap 1
set style fill solid 0.8 border -1
set key top left
set ylabel "{ylabel}" font ",10"
set grid ytics
{'set logscale y' if log else 'set yrange [0:*]'}
plot {cols}
"""
        subprocess.run(["gnuplot"], input=script.encode(), check=True)
print("wrote", base + ".json", base + "-rps.png", base + "-cpu.png")
