// The upgrade protocol between an old process and the new one it starts (internal).
//
// Version 1 (kProtocolVersion). The old process fork+execs the executable path it resolved
// at start-up with the same argv and cwd, and its environment minus every variable below,
// plus:
//   LISTEN_FDS=<n>          the handed-over fds are 3 .. 3+n-1 (systemd socket activation)
//   LISTEN_PID=<pid>        the new process's own pid (written between fork and exec)
//   LISTEN_FDNAMES=a:b:...  registry names, percent-encoded ('%' -> %25, ':' -> %3A) because
//                           systemd separates names with ':'
//   ENDLESS_PROTOCOL=1      a new process that does not speak this version refuses the fds
//   ENDLESS_READY_FD=<fd>   one end of a stream socketpair, the readiness channel (3+n)
//   ENDLESS_GENERATION=<g>  how many upgrades led to this process
//   ENDLESS_FD_OWNED=0110   per fd, '1' when this lineage created a unix socket path and
//                           must unlink it on a final shutdown ('0': systemd owns it)
//   ENDLESS_TABLE=<fd>      the generation table (lineage.hpp): a sealed memfd shared by
//                           every process of the lineage (3+n+1)
//   ENDLESS_ELDERS=g/p/fd,...  the older generations still alive when we were started,
//                           oldest first: generation, pid, and a pidfd of it (3+n+2..)
//   NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID=<new pid>   systemd's, passed on
//
// Readiness handshake on ENDLESS_READY_FD:
//   new -> old  'R'   the new process is ready to serve
//   old -> new  'A'   the old process told systemd MAINPID=<new> and now drains; right
//                     after it, in the same write: 'S', a 4-byte length (host order, at most
//                     1 MiB) and the counters that carry over (upgrader::on_carry): lines of
//                     "name\tvalue\n", value a decimal uint64
// The new process writes the pid file and sends MAINPID/READY=1 only after 'A' (or after EOF,
// which means the old process is gone and the new one is on its own). The old process treats
// EOF before 'R', the child's exit, or upgrade_timeout as a failed upgrade: it kills the
// child and goes on serving.
//
// After 'A' the new process keeps its end open: when it begins to drain (its own upgrade
// handed over, or SIGTERM) it sends 'D' and closes it. The old process, on probation
// (options::probation), then knows that the new one's exit will not be a crash to roll back
// from. A peer that never sends 'D' (closes at once) only loses that refinement.
//
// Before its 'R' the new process names each listener whose connections it takes: 'T', one
// length byte N, N bytes of the listener's local address. The old process hands over only
// those (with the hand-over off, or no server that takes them, it names none).
// Upgrade again, old -> new, after 'A': 'U' (one byte, no fd). An upgrade was asked of the
// old process after it had started this one (SIGHUP during the upgrade, or while draining):
// the new process upgrades once more, so that the binary on disk at the last request is the
// one that ends up serving. It may arrive in the same read as a following 'C' message.
// Connection hand-over, old -> new, after 'A' and until the new process sends 'D': messages
// of 'C', one length byte N (1..255), N bytes of the listener's local address, with exactly
// one fd in SCM_RIGHTS (an idle HTTP/1.1 keep-alive connection, nothing of its next request
// read yet). The new process reads them only after its ready(). After its 'D' it reads on
// until the old process, which closes its end on reading 'D', is gone from the channel: no
// connection in flight is dropped. A send that fails (EAGAIN, EPIPE) leaves the connection
// with the old process.
//
// SO_REUSEPORT takeover (ENDLESS_TAKEOVER_MODE=reuseport, reuseport.hpp) adds, before 'R',
// 'F', one length byte N, N bytes of a listener's local address: the new process takes
// connections the old one accepted from its own socket on that address and never read from
// ('N', below). After 'A', besides 'C': 'N', one length byte N, N bytes of the address, one
// fd in SCM_RIGHTS: a connection from what was left in the old socket's accept queue once new
// connections went to the new process's socket; served as if accepted here.
//
// Every variable is removed from this process's environment at load time, so nothing the
// application starts later inherits it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace endless::core::protocol {

inline constexpr int kVersion = 1;
inline constexpr char kReady = 'R';
inline constexpr char kAck = 'A';
inline constexpr char kDraining = 'D';
inline constexpr char kConnection = 'C';
inline constexpr char kTakes = 'T';
inline constexpr char kUpgradeAgain = 'U';
inline constexpr char kCarried = 'S';
inline constexpr char kTakesNew = 'F';
inline constexpr char kNewConnection = 'N';
inline constexpr std::uint32_t kMaxCarried = 1 << 20;
inline constexpr int kFirstFd = 3;  // SD_LISTEN_FDS_START

inline constexpr const char* kListenFds = "LISTEN_FDS";
inline constexpr const char* kListenPid = "LISTEN_PID";
inline constexpr const char* kListenFdNames = "LISTEN_FDNAMES";
inline constexpr const char* kProtocol = "ENDLESS_PROTOCOL";
inline constexpr const char* kReadyFd = "ENDLESS_READY_FD";
inline constexpr const char* kGeneration = "ENDLESS_GENERATION";
inline constexpr const char* kFdOwned = "ENDLESS_FD_OWNED";
inline constexpr const char* kTable = "ENDLESS_TABLE";
inline constexpr const char* kElders = "ENDLESS_ELDERS";
inline constexpr const char* kNotifySocket = "NOTIFY_SOCKET";
inline constexpr const char* kWatchdogUsec = "WATCHDOG_USEC";
inline constexpr const char* kWatchdogPid = "WATCHDOG_PID";

// Takeover (docs/core.md): a process started on its own, not by the old one, with this set to
// the old process's control socket, asks it for the listeners (command "takeover").
inline constexpr const char* kTakeover = "ENDLESS_TAKEOVER";
// "fds" (the default) or "reuseport": the TCP listeners are bound again by the new process
// with SO_REUSEPORT instead of passed (command "takeover reuseport"); "reuseport-steering"
// and "reuseport-migrate" ask for one way of keeping the old queue (reuseport.hpp), and are
// refused where it is not available ("takeover reuseport steering|migrate").
inline constexpr const char* kTakeoverMode = "ENDLESS_TAKEOVER_MODE";

inline constexpr const char* kAllVariables[] = {
    kListenFds,    kListenPid,    kListenFdNames, kProtocol, kReadyFd, kGeneration, kFdOwned,
    kNotifySocket, kWatchdogUsec, kWatchdogPid,   kTable,    kElders,  kTakeover,   kTakeoverMode};

// The takeover answer, old -> new, on the control connection after "takeover\n": one
// sendmsg() with every fd in SCM_RIGHTS and lines of text, each fd named by its index:
//   takeover 1                       (kVersion)
//   mode reuseport <steering|migrate>  after "takeover reuseport" only
//   generation <g>                   the new process's generation
//   fd <index> <owned 0|1> <name>    a listener (name encoded as in LISTEN_FDNAMES)
//   bind <owned 0|1> <name> <address> <v6only 0|1>   (reuseport) a TCP listener the new
//                                    process binds itself, with SO_REUSEPORT, no fd
//   table <index>                    the generation table
//   elder <index> <generation> <pid> an older generation's pidfd (the old process's own last)
//   end
// or "error <reason> <text>" and no fds. The connection then carries the readiness handshake
// and everything after it exactly as ENDLESS_READY_FD does.
inline constexpr std::size_t kMaxTakeoverFds = 200;  // below SCM_MAX_FD (253)

}  // namespace endless::core::protocol
