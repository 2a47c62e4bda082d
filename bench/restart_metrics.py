#!/usr/bin/env python3
"""Restart metrics for one server: old-process exit time, hand-over time, the longest gap a
2 ms probe sees, RSS of old + new sampled every 2 ms through the restarts (peak against steady
state), CPU cost of a restart, and open fds before/after N restarts. Prints a Markdown section;
--json also writes every figure and the RSS samples (per process and summed, with the signal
times) for bench/plot_restarts.py.

  restart_metrics.py SERVER [--restarts 5] [--fd-restarts 100] [--signal HUP] [--port 18098]
                            [--json FILE]

SERVER is either the path of a binary that follows DESIGN.md's example contract
(examples/hello, build/bench/peers/tableflip, build/bench/peers/grace: --addr, --pidfile,
X-Pid; it restarts on the signal by replacing itself with a new process), or the word `nginx`
or `h2o`: the distribution's server in master mode, configured as bench/peer_restart.sh does
(bench/nginx.conf plus `add_header X-Pid $pid`; bench/h2o.conf under `h2o -m master`). Their
pid file names the master, which a restart keeps; the serving processes (nginx's worker, h2o's
server process under start_server) change. What is measured, per kind:

  figure                 contract server                 nginx / h2o (master mode)
  signal sent to         the pid in the pid file         the master
  old process(es)        that pid                        the master's descendants then
  pid file names new     when the file names a new pid   - (it names the master throughout)
  first answer, new pid  from the signal to the first answer with an X-Pid not seen before
                         it, seen by a client that sends GET / on a new connection back to
                         back from the signal on (not the 2 ms probe: that would add up to
                         2 ms of its own)
  new process start-up   exec to ready, as the old process logs it ("is ready; handing over
                         (X ms after its exec)", endless only); the hand-over beyond it is
                         the first answer minus that. For every contract server also a fresh
                         start: spawn to the first answer on a free port (median of 5)
  old process gone       the old pid exits               every old descendant exits
  RSS                    old + new + their descendants   master + all its descendants
  CPU of a restart       user+sys, from the signal to the end of the restart, of every process
                         measured (for nginx and h2o that includes the master's own work);
                         a process born during the restart counts from its start
  open fds               the serving process             summed over master + descendants
"""
import argparse, json, os, re, signal, socket, subprocess, sys, tempfile, threading, time

TICK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_S = 0.002


def get(port, path="/", timeout=2.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


def x_pid(response):
    head = response.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-pid":
            return value.strip().decode(errors="replace")
    return None


def read_pid(path):
    # Servers that write in place end with a newline once complete; those that rename a
    # finished file into place (tableflip) may have none.
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_table():
    """pid -> (ppid, user+sys ticks, comm) for every live process, from one pass over /proc."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        head, _, rest = raw.rpartition(b")")
        fields = rest.split()
        if len(fields) < 13 or fields[0] == b"Z":
            continue
        comm = head.partition(b"(")[2].decode(errors="replace")
        table[int(d)] = (int(fields[1]), int(fields[11]) + int(fields[12]), comm)
    return table


def descendants(roots, table):
    """roots (those alive) and every live descendant of them."""
    kids = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, queue = set(), [r for r in roots if r in table]
    while queue:  # bounded: each live pid enters once
        pid = queue.pop()
        if pid in out:
            continue
        out.add(pid)
        queue.extend(kids.get(pid, ()))
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.001)
    return None


class Server:
    """One server we started, and how to find its processes."""

    def __init__(self, spec, port, tmp):
        self.port, self.tmp = port, tmp
        self.log = open(os.path.join(tmp, "log"), "w")
        self.kind = spec if spec in ("nginx", "h2o") else "contract"
        self.master = None  # nginx / h2o: the pid the pid file names (kept by a restart)
        if self.kind == "contract":
            self.pidfile = os.path.join(tmp, "pid")
            self.label = f"`{os.path.relpath(spec)}`"
            argv = [spec, "--addr", f"127.0.0.1:{port}", "--pidfile", self.pidfile]
        elif self.kind == "nginx":
            argv = self._nginx()
        else:
            argv = self._h2o()
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        self.comm = {}  # every pid measured -> its name: stop() ends those still alive
        self.roots = {self.proc.pid}  # contract servers: every serving pid seen while it lives

    def _nginx(self):
        d = os.path.join(self.tmp, "nginx")
        os.makedirs(d)
        os.chmod(self.tmp, 0o755)  # workers run as nobody when started as root
        with open(os.path.join(ROOT, "bench", "nginx.conf")) as f:
            conf = f.read().replace("@PORT@", str(self.port)).replace("@DIR@", d)
        built = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
        lines = []
        for line in conf.splitlines():
            tag = line.rsplit("# needs:", 1)
            if len(tag) == 2 and f"--without-{tag[1].strip()}_module" in built:
                continue
            if line.strip().startswith("return 200 "):  # the worker's pid, as peer_restart.sh
                lines.append(line[: len(line) - len(line.lstrip())] + "add_header X-Pid $pid;")
            lines.append(line)
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.pidfile = os.path.join(d, "nginx.pid")
        self.label = "nginx (bench/nginx.conf, master + 1 worker, add_header X-Pid $pid)"
        return ["nginx", "-p", d + "/", "-c", path, "-e", os.path.join(d, "error.log")]

    def _h2o(self):
        d = os.path.join(self.tmp, "h2o")
        os.makedirs(d)
        os.chmod(self.tmp, 0o755)
        with open(os.path.join(ROOT, "bench", "h2o.conf")) as f:
            conf = f.read().replace("@PORT@", str(self.port)).replace("@DIR@", d)
        if os.getuid() != 0:
            conf = "\n".join(l for l in conf.splitlines() if "# root-only" not in l) + "\n"
        path = os.path.join(d, "h2o.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.pidfile = os.path.join(d, "h2o.pid")
        self.label = "h2o -m master (start_server; bench/h2o.conf, 1 thread, mruby X-Pid)"
        return ["h2o", "-m", "master", "-c", path]

    def ready(self, timeout=10):
        def up():
            if self.proc.poll() is not None:
                return "exited"
            pid = read_pid(self.pidfile)
            try:
                return pid if pid and b"Hello Zero-Downtime!" in get(self.port) else None
            except OSError:
                return None

        pid = wait_for(up, timeout)
        if pid in (None, "exited"):
            return False
        if self.kind != "contract":
            self.master = pid
        return True

    def target(self):
        """The pid the restart signal goes to."""
        return self.master if self.master else read_pid(self.pidfile)

    def serving(self, table=None):
        """The processes that answer requests now."""
        table = table if table is not None else proc_table()
        if self.master:
            return descendants([self.master], table) - {self.master}
        pid = read_pid(self.pidfile)
        return descendants([pid], table) if pid else set()

    def stop(self):
        """TERM every process of ours still alive (a measured pid only if it still runs the
        same program, against pid reuse), KILL what is left after 10 s."""
        table = proc_table()
        roots = {r for r in self.roots | {self.master, read_pid(self.pidfile)}
                 if r in table and self.comm.get(r, table[r][2]) == table[r][2]}
        pids = descendants(roots, table)
        pids |= {p for p, c in self.comm.items() if p in table and table[p][2] == c}
        for p in pids:
            try:
                os.kill(p, signal.SIGTERM)
            except OSError:
                pass
        wait_for(lambda: not any(alive(p) for p in pids), 10)
        for p in pids:
            if alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass


class Probe(threading.Thread):
    """A request every 2 ms on a new connection: the longest time without a success, and the
    X-Pid and time of every answer."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.gap, self.failures, self.count = port, False, 0.0, 0, 0
        self.answers = []  # (monotonic time, X-Pid)

    def run(self):
        last_ok = time.monotonic()
        while not self.stop:
            t = time.monotonic()
            try:
                r = get(self.port)
                if b" 200 " in r.split(b"\r\n", 1)[0]:
                    now = time.monotonic()
                    self.gap = max(self.gap, now - last_ok)
                    last_ok = now
                    self.count += 1
                    self.answers.append((now, x_pid(r)))
                else:
                    self.failures += 1
            except OSError:
                self.failures += 1
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - t)))


class FirstNew(threading.Thread):
    """From its start, GET / on a new connection back to back until an X-Pid not in `seen`
    answers (15 s at most): the time of that answer, and its pid."""

    def __init__(self, port, seen):
        super().__init__(daemon=True)
        self.port, self.seen, self.answer = port, seen, None

    def run(self):
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                r = get(self.port, timeout=1.0)
            except OSError:
                time.sleep(0.0002)  # no busy loop against a refusing port
                continue
            now = time.monotonic()
            p = x_pid(r) if b" 200 " in r.split(b"\r\n", 1)[0] else None
            if p is not None and p not in self.seen:
                self.answer = (now, p)
                return


def fresh_start_ms(binary, port, runs=5):
    """Spawn to first answer of a fresh `binary --addr 127.0.0.1:port` (median of `runs`):
    the program's own start-up, for comparison with a hand-over. Only an answer carrying the
    spawned pid counts (a stranger on the port is not measured); None if one never came."""
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
        pid = os.posix_spawn(binary, [binary, "--addr", f"127.0.0.1:{port}"], os.environ,
                             file_actions=quiet)
        ok = None
        while time.monotonic() - t0 < 10:
            try:
                # that binary's answer, not a stranger's on the port
                if x_pid(get(port, timeout=1.0)) == str(pid):
                    ok = time.monotonic()
                    break
            except OSError:
                time.sleep(0.0001)
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        if ok is None:
            return None
        times.append((ok - t0) * 1000)
    return round(sorted(times)[len(times) // 2], 3)


def logged_startups(log_path):
    """new pid -> exec-to-ready ms, from the old process's "is ready; handing over (X ms after
    its exec)" lines (endless)."""
    found = {}
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                m = re.search(r"new process (\d+) is ready; handing over \(([\d.]+) ms after its exec\)", line)
                if m:
                    found[m.group(1)] = float(m.group(2))
    except OSError:
        pass
    return found


class Sampler(threading.Thread):
    """Every 2 ms: the server's processes (see Server), their VmRSS and CPU ticks."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.stop = server, False
        self.samples = []  # (monotonic time, {pid: (rss KiB, cpu ticks)})

    def run(self):
        srv = self.server
        while not self.stop:
            t = time.monotonic()
            table = proc_table()
            if srv.master:
                pids = descendants([srv.master], table)
            else:
                pid = read_pid(srv.pidfile)
                if pid:
                    srv.roots.add(pid)
                srv.roots = {p for p in srv.roots if p in table}
                # the new process is the old one's child until the old one exits
                pids = descendants(srv.roots, table)
            now = {}
            for p in pids:
                now[p] = (rss_kib(p), table[p][1])
                srv.comm.setdefault(p, table[p][2])
            self.samples.append((t, now))
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - t)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("server", help="a contract binary's path, or nginx, or h2o")
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--fd-restarts", type=int, default=100)
    ap.add_argument("--signal", default="HUP")
    ap.add_argument("--port", type=int, default=18098)
    ap.add_argument("--json", help="also write every figure and the RSS samples here")
    ap.add_argument("--name", help="the server's name in the JSON (default: from SERVER)")
    a = ap.parse_args()
    if a.restarts < 1 or a.fd_restarts < a.restarts:
        sys.exit("restart_metrics: need 1 <= --restarts <= --fd-restarts")
    sig = getattr(signal, "SIG" + a.signal)
    tmp = tempfile.mkdtemp(prefix="endless-metrics.")
    srv = Server(a.server, a.port, tmp)
    try:
        run(a, sig, srv)
    finally:
        srv.stop()
        subprocess.run(["rm", "-rf", tmp])


def run(a, sig, srv):
    if not srv.ready():
        srv.log.flush()
        with open(srv.log.name) as f:
            sys.stderr.write(f.read()[-2000:])
        sys.exit(f"restart_metrics: {a.server} did not answer GET / on 127.0.0.1:{a.port}")
    for _ in range(50):
        get(a.port)
    table = proc_table()
    first_serving = srv.serving(table)
    measured = descendants([srv.master], table) if srv.master else first_serving
    fds_before = sum(fds(p) for p in measured)
    procs_before = len(measured)
    probe, sampler = Probe(a.port), Sampler(srv)
    sampler.start()
    probe.start()
    rows, marks = [], []  # marks: (signal time, end of the restart)
    for i in range(a.restarts):
        time.sleep(0.5)
        target = srv.target()
        old = srv.serving()
        seen = {p for _, p in probe.answers} | {str(p) for p in old} | {str(target)}
        first = FirstNew(a.port, seen)
        first.start()
        t0 = time.monotonic()
        os.kill(target, sig)
        if srv.master:
            file_ms = None
        else:
            n = wait_for(lambda: (lambda v: v if v and v != target else None)(
                read_pid(srv.pidfile)), 15)
            file_ms = (time.monotonic() - t0) * 1000 if n else None

        first.join()
        answer = first.answer
        gone = wait_for(lambda: not any(alive(p) for p in old), 70)
        end = time.monotonic()
        time.sleep(0.05)
        new = srv.serving()
        r3 = lambda v: None if v is None else round(v, 3)
        rows.append({"restart": i + 1, "signalled_pid": target, "old_pids": sorted(old),
                     "new_pids": sorted(new),
                     "pid_file_ms": r3(file_ms),
                     "first_new_answer_ms": r3((answer[0] - t0) * 1000 if answer else None),
                     "first_new_xpid": answer[1] if answer else None,
                     "old_gone_ms": r3((end - t0) * 1000 if gone else None)})
        marks.append((t0, time.monotonic()))
    time.sleep(0.2)
    probe.stop = sampler.stop = True
    probe.join()
    sampler.join()

    # RSS and CPU from the samples
    samples = sampler.samples
    before = [sum(r for r, _ in s.values()) for t, s in samples if t < marks[0][0]]
    steady = sorted(before)[len(before) // 2] if before else 0
    for row, (t0, t1) in zip(rows, marks):
        window = [(t, s) for t, s in samples if t0 <= t <= t1]
        at_signal = next((s for t, s in reversed(samples) if t < t0), {})
        row["peak_rss_kib"] = max((sum(r for r, _ in s.values()) for _, s in window), default=0)
        last = {}
        for _, s in window:
            for p, (_, c) in s.items():
                last[p] = c
        ticks = sum(c - at_signal.get(p, (0, 0))[1] for p, c in last.items())
        row["cpu_ms"] = ticks * 1000 / TICK
        row["cpu_processes"] = len(last)

    # The new process's own start-up, as the old one logged it (endless), and the hand-over
    # beyond it.
    srv.log.flush()
    startups = logged_startups(srv.log.name)
    for row in rows:
        st = startups.get(str(row["first_new_xpid"]))
        row["startup_ms"] = st
        row["beyond_startup_ms"] = (round(row["first_new_answer_ms"] - st, 3)
                                    if st is not None and row["first_new_answer_ms"] is not None
                                    else None)

    fds_after_n = sum(fds(p) for p in measured_now(srv))
    # The remaining restarts, back to back. A signal that starts no restart within 2 s (some
    # servers refuse an upgrade while they still settle after the previous one) is sent again,
    # up to 10 times; how often that happened is reported.
    resent, stuck = 0, 0
    for _ in range(a.fd_restarts - a.restarts):
        old = srv.serving()
        old_pid = srv.target()
        seen = {str(p) for p in old}

        def new_pid():
            v = read_pid(srv.pidfile)
            return v if v and v != old_pid else None

        def new_answer():
            try:
                p = x_pid(get(a.port))
            except OSError:
                return None
            return p if p and p not in seen else None

        for attempt in range(10):
            os.kill(old_pid, sig)
            if wait_for(new_answer if srv.master else new_pid, 2):
                break
            resent += 1
        else:
            stuck += 1
        wait_for(lambda: not any(alive(p) for p in old), 70)
        get(a.port)
    final = measured_now(srv)
    fds_after = sum(fds(p) for p in final)
    fresh = fresh_start_ms(a.server, a.port + 1) if srv.kind == "contract" else None

    name = a.name or (a.server if srv.kind != "contract" else os.path.basename(a.server))
    t_origin = samples[0][0] if samples else 0
    ms = lambda t: round((t - t_origin) * 1000, 1)
    procs = {}
    for t, s in samples:
        for p, (r, _) in s.items():
            procs.setdefault(p, []).append([ms(t), r])
    intervals = [b[0] - a_[0] for a_, b in zip(samples, samples[1:])]
    result = {
        "server": name, "kind": srv.kind, "label": srv.label, "port": a.port,
        "signal": "SIG" + a.signal, "restarts": rows, "steady_rss_kib": steady,
        "fresh_start_ms": fresh,
        "processes_at_start": procs_before,
        "probe": {"answers": probe.count, "failures": probe.failures,
                  "longest_gap_ms": round(probe.gap * 1000, 3)},
        "fds": {"start": fds_before, "after_restarts": fds_after_n,
                "after_fd_restarts": fds_after, "restarts": a.restarts,
                "fd_restarts": a.fd_restarts, "processes_at_end": len(final),
                "signals_resent": resent, "restarts_not_started": stuck},
        "rss": {
            "interval_ms": SAMPLE_S * 1000,
            "mean_interval_ms": round(sum(intervals) / len(intervals) * 1000, 3) if intervals else None,
            "signals_ms": [ms(t0) for t0, _ in marks],
            "restart_ends_ms": [ms(t1) for _, t1 in marks],
            "total": [[ms(t), sum(r for r, _ in s.values())] for t, s in samples],
            "processes": {str(p): {"comm": srv.comm.get(p, "?"), "samples": v}
                          for p, v in procs.items()},
        },
    }
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, separators=(",", ":"))
            f.write("\n")
    report(a, srv, result)


def measured_now(srv):
    table = proc_table()
    return descendants([srv.master], table) if srv.master else srv.serving(table)


def report(a, srv, r):
    p = r["probe"]
    n = r["processes_at_start"]
    what = f"{n} processes: master + descendants" if srv.master else f"{n} process"
    print(f"Server: {srv.label}; steady-state RSS {r['steady_rss_kib']} KiB "
          f"({what}; median of the 2 ms samples over the 0.5 s "
          f"before the first signal); probe: {p['answers']} requests every 2 ms on new "
          f"connections, {p['failures']} failed, longest gap between two answers "
          f"{p['longest_gap_ms']:.1f} ms over {a.restarts} restarts; RSS sampled every "
          f"{r['rss']['mean_interval_ms']} ms on average.")
    print()
    f = lambda v: "—" if v is None else f"{v:.1f} ms"
    pids = lambda v: " ".join(str(x) for x in v) or "—"
    if r["fresh_start_ms"] is not None:
        print(f"A fresh start of the same binary (spawn to the first answer on a free port, "
              f"median of 5): {r['fresh_start_ms']:.1f} ms.")
        print()
    print("| restart | signal sent to | old pid(s) | new pid(s) | pid file names the new pid after "
          "| first answer from a new pid | new process: exec to ready | hand-over beyond it "
          "| old process(es) gone after | peak RSS old+new | peak / steady | CPU of the restart |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for row in r["restarts"]:
        cpu = row["cpu_ms"]
        cpu = f"{cpu:.0f} ms" if cpu >= 10 else "< 10 ms"  # /proc counts in 10 ms ticks
        ratio = row["peak_rss_kib"] / r["steady_rss_kib"] if r["steady_rss_kib"] else float("nan")
        file_ms = "— (names the master)" if srv.master else f(row["pid_file_ms"])
        print(f"| {row['restart']} | {row['signalled_pid']} | {pids(row['old_pids'])} | "
              f"{pids(row['new_pids'])} | {file_ms} | {f(row['first_new_answer_ms'])} | "
              f"{f(row.get('startup_ms'))} | {f(row.get('beyond_startup_ms'))} | "
              f"{f(row['old_gone_ms'])} | {row['peak_rss_kib']} KiB | {ratio:.2f}x | {cpu} |")
    print()
    d = r["fds"]
    where = ("summed over the master and its descendants "
             f"({r['processes_at_start']} processes at start, {d['processes_at_end']} at the end)"
             if srv.master else "of the serving process")
    print(f"Open fds {where}: {d['start']} at start, {d['after_restarts']} after "
          f"{d['restarts']} restarts, {d['after_fd_restarts']} after {d['fd_restarts']} restarts.")
    if d["signals_resent"] or d["restarts_not_started"]:
        print()
        print(f"Of the {d['fd_restarts'] - d['restarts']} back-to-back restarts after the first "
              f"{d['restarts']}, {d['signals_resent']} signal(s) started no restart within 2 s "
              f"and were sent again; {d['restarts_not_started']} restart(s) never started "
              f"after 10 signals.")


if __name__ == "__main__":
    main()
