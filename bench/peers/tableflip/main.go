// A benchmark peer: the example server contract (shared/DESIGN.md, as examples/hello) served
// by Go's net/http and restarted with github.com/cloudflare/tableflip, following tableflip's
// own HTTP example (http_example_test.go): upg.Listen, upg.Ready, <-upg.Exit(),
// srv.Shutdown; SIGHUP -> upg.Upgrade; the pid file written by tableflip itself (Ready()
// writes Options.PIDFile atomically once the new process is up).
//
//	tableflip --addr HOST:PORT [--pidfile FILE] [--hammer-time SECONDS]
//
//	GET /                  200 "Hello Zero-Downtime!\n"
//	GET /ping?seq=N&ms=M   waits M ms (its own goroutine), then "pong-N"
//	GET /pid               the serving process's pid
//	every response         X-Pid: <pid>
//	SIGHUP                 start a new process on the same listening socket; once it is
//	                       ready, this one stops accepting, drains and exits
//	SIGTERM, SIGINT        drain and exit (removing the pid file if it still names us)
//
// Built offline against Debian's golang-github-cloudflare-tableflip-dev: see
// bench/peers/build.sh.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
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

// removePIDFile removes path if it still names this process (a final shutdown, not a
// hand-over: after a hand-over the new process has already rewritten it).
func removePIDFile(path string) {
	if path == "" {
		return
	}
	if b, err := os.ReadFile(path); err == nil &&
		string(bytes.TrimSpace(b)) == strconv.Itoa(os.Getpid()) {
		os.Remove(path)
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "`HOST:PORT` to listen on")
	pidFile := flag.String("pidfile", "", "`FILE` naming the serving process")
	hammer := flag.Float64("hammer-time", 30, "`SECONDS` to drain before exiting anyway")
	flag.Parse()
	pid := strconv.Itoa(os.Getpid())
	log.SetFlags(0)
	log.SetPrefix(pid + " ")

	upg, err := tableflip.New(tableflip.Options{PIDFile: *pidFile})
	if err != nil {
		log.Fatalln("tableflip:", err)
	}
	defer upg.Stop()

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
		for s := range sig {
			if s != syscall.SIGHUP {
				upg.Stop() // closes upg.Exit(): drain below, no new process
				return
			}
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()

	// Listen must be called before Ready (in a new process it returns the inherited socket).
	ln, err := upg.Listen("tcp", *addr)
	if err != nil {
		log.Fatalln("can't listen:", err)
	}
	srv := &http.Server{Handler: handler(pid)}
	go func() {
		if err := srv.Serve(ln); err != http.ErrServerClosed {
			log.Println("serve:", err)
		}
	}()

	log.Println(*addr)
	if err := upg.Ready(); err != nil { // tells the parent to exit; writes the pid file
		log.Fatalln("ready:", err)
	}
	<-upg.Exit()

	// As tableflip's example: no new upgrade can happen until this process is gone, so the
	// drain has a deadline.
	time.AfterFunc(time.Duration(*hammer*float64(time.Second)), func() {
		log.Println("drain timed out; exiting")
		os.Exit(1)
	})
	srv.Shutdown(context.Background())
	removePIDFile(*pidFile)
	log.Println("exiting")
}
