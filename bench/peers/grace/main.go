// A benchmark peer: the example server contract (shared/DESIGN.md, as examples/hello) served
// by Go's net/http and restarted with github.com/facebookgo/grace/gracehttp.
//
//	grace --addr HOST:PORT [--pidfile FILE]
//
//	GET /                  200 "Hello Zero-Downtime!\n"
//	GET /ping?seq=N&ms=M   waits M ms (its own goroutine), then "pong-N"
//	GET /pid               the serving process's pid
//	every response         X-Pid: <pid>
//	SIGUSR2                restart (NOT SIGHUP: gracehttp only restarts on SIGUSR2 and does
//	                       not handle SIGHUP at all, so SIGHUP would kill the process). The
//	                       new process inherits the socket (LISTEN_FDS), starts serving and
//	                       sends SIGTERM to the old one, which then drains and exits
//	SIGTERM, SIGINT        drain and exit (removing the pid file if it still names us)
//
// gracehttp has no pid file and no "ready" hook. Its first log line is printed right after
// the listener is open (inherited or new) and just before serving starts, and, in a new
// process, before it signals its parent; so the logger below writes the pid file on that
// line: the file names the new process before the old one is told to leave.
//
// gracehttp's drain limit is httpdown's default (a minute, not configurable through
// gracehttp), so there is no --hammer-time here.
//
// Built offline against Debian's golang-github-facebookgo-grace-dev: see
// bench/peers/build.sh.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/facebookgo/grace/gracehttp"
)

func handler(pid string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "Hello Zero-Downtime!\n")
	})
	mux.HandleFunc("/pid", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, pid)
	})
	mux.HandleFunc("/ping", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		seq := q.Get("seq")
		if seq == "" {
			seq = "0"
		}
		if ms, err := strconv.Atoi(q.Get("ms")); err == nil && ms > 0 {
			if ms > 600000 {
				ms = 600000
			}
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, "pong-"+seq)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Pid", pid)
		mux.ServeHTTP(w, r)
	})
}

// writePIDFile writes pid to path atomically (a temporary file beside it, then rename).
func writePIDFile(path, pid string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pid-*")
	if err != nil {
		return err
	}
	if _, err = tmp.WriteString(pid + "\n"); err == nil {
		err = tmp.Close()
	} else {
		tmp.Close()
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// removePIDFile removes path if it still names this process (a final shutdown; after a
// hand-over the new process has already rewritten it).
func removePIDFile(path, pid string) {
	if b, err := os.ReadFile(path); err == nil && string(bytes.TrimSpace(b)) == pid {
		os.Remove(path)
	}
}

// startLog passes gracehttp's log lines to stderr, prefixed with our pid, and writes the
// pid file on the first one ("Serving ..." or "Graceful handoff ...": listener open,
// serving starts now).
type startLog struct {
	once    sync.Once
	pid     string
	addr    string
	pidFile string
}

func (l *startLog) Write(p []byte) (int, error) {
	l.once.Do(func() {
		if l.pidFile != "" {
			if err := writePIDFile(l.pidFile, l.pid); err != nil {
				fmt.Fprintf(os.Stderr, "%s can't write pid file: %v\n", l.pid, err)
			}
		}
		fmt.Fprintf(os.Stderr, "%s %s\n", l.pid, l.addr)
	})
	return os.Stderr.Write(append([]byte(l.pid+" "), p...))
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "`HOST:PORT` to listen on")
	pidFile := flag.String("pidfile", "", "`FILE` naming the serving process")
	flag.Parse()
	pid := strconv.Itoa(os.Getpid())
	log.SetFlags(0)
	log.SetPrefix(pid + " ")
	gracehttp.SetLogger(log.New(&startLog{pid: pid, addr: *addr, pidFile: *pidFile}, "", 0))

	err := gracehttp.Serve(&http.Server{Addr: *addr, Handler: handler(pid)})
	if *pidFile != "" {
		removePIDFile(*pidFile, pid)
	}
	if err != nil {
		log.Fatalln("serve:", err)
	}
}
