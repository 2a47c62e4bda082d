// Graceful shutdown with a background worker: the server hands out jobs, a worker thread of
// the application processes them, and shutdown_initiated tells the worker to finish what is
// queued and stop, while the server drains its connections. The process exits only once
// both are done (the worker is joined after listen_and_serve() returns). On SIGHUP the new
// process starts a worker of its own; the old one finishes its queue and stops.
//   graceful_worker [ADDR]   (default :8080)
//   curl -X POST localhost:8080/jobs   (queues a 200 ms job)   curl localhost:8080/jobs
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

#include "endless/endless.hpp"

namespace {

class worker {
 public:
  worker() : thread_([this] { run(); }) {}
  ~worker() { stop(); }

  void add(int job) {
    std::lock_guard lock(mu_);
    queue_.push_back(job);
    cv_.notify_one();
  }
  std::size_t done() {
    std::lock_guard lock(mu_);
    return done_;
  }
  // Finish the queue, then stop; returns at once.
  void finish() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_one();
  }
  // finish(), and wait for the worker. One thread only.
  void stop() {
    finish();
    if (thread_.joinable()) thread_.join();
  }

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break;  // stopping, nothing left
      int job = queue_.front();
      queue_.pop_front();
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the job's work
      lock.lock();
      ++done_;
      std::fprintf(stderr, "%d worker: job %d done\n", ::getpid(), job);
    }
    std::fprintf(stderr, "%d worker: stopped after %zu job(s)\n", ::getpid(), done_);
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int> queue_;
  std::size_t done_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace endless::http;
  worker jobs;
  int next = 0;
  std::mutex next_mu;
  router r;
  r.post("/jobs", [&](const request&, response& res) {
    int id;
    {
      std::lock_guard lock(next_mu);
      id = ++next;
    }
    jobs.add(id);
    res.status(202).text("queued job " + std::to_string(id) + "\n");
  });
  r.get("/jobs",
        [&](const request&, response& res) { res.text(std::to_string(jobs.done()) + " done\n"); });
  server srv(r);
  srv.addr(argc > 1 ? argv[1] : ":8080");
  // Runs on the upgrader's thread when the drain begins (SIGTERM, or after a hand-over):
  // no new jobs will come from this process's clients once they are drained, so let the
  // worker finish its queue in parallel with the drain.
  srv.shutdown_initiated([&] {
    std::fprintf(stderr, "%d shutdown initiated: finishing the queued jobs\n", ::getpid());
    jobs.finish();
  });
  int rc = srv.listen_and_serve();
  jobs.stop();  // waits for the worker if the drain ended first
  return rc;
}
