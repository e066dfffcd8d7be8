"""Who may use an instance's Runtime API: the instance's own processes, and no one else.

The Runtime API is served over TCP on 127.0.0.1 because that is what AWS's runtime interface
clients and curl-based bootstraps speak (`AWS_LAMBDA_RUNTIME_API=host:port`): a Unix socket
would break them, and a network namespace per instance would take the host's network from the
functions that have `network: true` (they share the host's, loopback included). So anything
on the host's network namespace can connect, and each accepted connection is checked instead:

1. the connecting socket is found by its address with one NETLINK_SOCK_DIAG request for that
   exact 4-tuple (the kernel looks it up in its hash table: the cost does not grow with the
   host's sockets, where /proc/net/tcp lists them all); this gives its owner's uid and its
   inode. In a sandbox every process of the instance has the adapter's uid (no capabilities,
   no_new_privs: none can change it), so another uid is refused there and then, before any
   /proc is read: a flood of connections from other functions costs the adapter ~10 us each;
2. that inode must be among the open files of a process of the instance, which are
   - in a sandbox: every process the adapter can see. Its pid namespace is the sandbox's own
     (bubblewrap's init, pid 1, is the adapter's parent; orphans are reparented to it), and so
     is its /proc: a socket held by another function's process cannot be found at all;
   - with `isolation: none`: the adapter's descendants (the executable and what it started;
     a process that left the tree by a double fork is not one of them). The function then runs
     with the host's uid and /proc, so this keeps other functions off the instance's
     invocations but is no boundary against a function that is itself unconfined (as root, it
     could ptrace the instance instead).
   Threads share their process's descriptors, so one listing of /proc/<pid>/fd per process
   does; every task's `children` file is read, as a thread's children are listed under it.

Neither uid nor address alone would do: sandboxes of different functions may share a uid (it is
a hash of the name, and Sora's own uid when Sora does not run as root), and every connection
comes from 127.0.0.1. A socket cannot be put into another process's descriptor table without
that process's help (SCM_RIGHTS needs the receiver; pidfd_getfd and ptrace need to be allowed
to trace it), so holding the socket proves who is calling.

No library: psutil's `net_connections()` parses the whole /proc/net/tcp on every call, and
pyroute2 (which has sock_diag) is a large dependency for the one fixed request below, which the
adapter (on Sora's Python, standard library plus httptools) makes with `struct`.

Cost (CPU time of the adapter, on the development machine: 2 busy cores, load ~8): the
netlink lookup ~10 us; each process of the instance ~30 us (its tasks, their `children`, its
fd folder) plus ~5 us per descriptor. In all 0.13 ms for a connection from a steady process,
0.34 ms (median) from a curl started by a shell, the worst case: a curl bootstrap opens two
connections per invocation, which its two curl processes make cost ~20 ms anyway. Nothing per
request on a kept-alive connection (the RICs and Go keep theirs).
"""
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
ALL_STATES = 0xFFFFFFFF
NO_COOKIE = 0xFFFFFFFF
NLMSG_HEADER = struct.Struct("=IHHII")            # len, type, flags, seq, pid
DIAG_REQUEST = struct.Struct("=BBBxI")            # family, protocol, ext, pad, states
# inet_diag_sockid: ports and addresses in network order (an IPv4 address fills the first 4 of
# 16 bytes), then the interface and the cookie in host order.
SOCKID = struct.Struct("!HH4s12x4s12x")
SOCKID_TAIL = struct.Struct("=III")
# inet_diag_msg after the header: family, state, timer, retrans, the 48-byte sockid, expires,
# rqueue, wqueue, uid, inode.
DIAG_MESSAGE = struct.Struct("=BBBB48sIIIII")


def socket_owner(netlink, seq, local, remote):
    """(uid, inode) of the TCP socket whose own address is `local` and whose peer is `remote`
    (both (ip, port), IPv4), or None if there is none (it closed meanwhile)."""
    sockid = SOCKID.pack(local[1], remote[1], socket.inet_aton(local[0]),
                         socket.inet_aton(remote[0]))
    body = DIAG_REQUEST.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, ALL_STATES) + sockid + \
        SOCKID_TAIL.pack(0, NO_COOKIE, NO_COOKIE)
    netlink.send(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY,
                                   NLM_F_REQUEST, seq, 0) + body)
    while True:
        answer = netlink.recv(1 << 12)
        _, kind, _, answer_seq, _ = NLMSG_HEADER.unpack_from(answer)
        if answer_seq == seq:
            break   # an answer to an earlier request that timed out is skipped
    if kind == NLMSG_ERROR or len(answer) < NLMSG_HEADER.size + DIAG_MESSAGE.size:
        return None
    *_, found_id, _, _, _, uid, inode = DIAG_MESSAGE.unpack_from(answer, NLMSG_HEADER.size)
    if found_id[:SOCKID.size] != sockid:
        return None
    return uid, inode


def descendants(root):
    """The pids under `root` (itself excluded), through every task's `children` file."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir("/proc/%d/task" % pid)
        except OSError:
            continue   # gone meanwhile
        for tid in tasks:
            try:   # os.open: half the cost of open() for a file this small (7 us, not 16)
                fd = os.open("/proc/%d/task/%s/children" % (pid, tid), os.O_RDONLY)
                try:
                    children = [int(c) for c in os.read(fd, 1 << 16).split()]
                finally:
                    os.close(fd)
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def holds(pid, link):
    """Whether process `pid` has an open descriptor whose link reads `link`."""
    folder = "/proc/%d/fd" % pid
    try:
        names = os.listdir(folder)
    except OSError:
        return False   # gone, or not ours to read (bubblewrap's init runs as root)
    for name in names:
        try:
            if os.readlink(folder + "/" + name) == link:
                return True
        except OSError:
            continue
    return False


class OwnPeers:
    """Tells the instance's own connections from anyone else's."""

    def __init__(self, sandboxed, container_init=None):
        self.netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                     NETLINK_SOCK_DIAG)
        self.netlink.settimeout(1.0)
        self.seq = 0
        self.root_is_own = False   # whether the root process itself may connect
        if container_init is not None:
            # A container on the host's network (the adapter runs on the host, beside it):
            # its processes are its init (host pid) and the init's descendants, all of the
            # container's one uid (no capabilities, no new privileges: none can change it).
            self.root, self.root_is_own = container_init, True
            self.uid = os.stat("/proc/%d" % container_init).st_uid
            return
        # In a sandbox the adapter is the child of bubblewrap's init (pid 1 of the sandbox's
        # pid namespace), whose descendants are all the sandbox has. Both signs are required:
        # were the adapter not in a pid namespace of its own, pid 1 would be the host's init.
        self.root = 1 if sandboxed and os.getppid() == 1 else os.getpid()
        self.uid = os.geteuid() if self.root == 1 else None   # the sandbox's one uid

    def is_own(self, sock):
        """Whether the process at the other end of `sock` (accepted, IPv4) is the instance's."""
        self.seq += 1
        try:
            owner = socket_owner(self.netlink, self.seq, sock.getpeername(), sock.getsockname())
        except OSError:
            return False   # no answer from the kernel, or the peer has already gone: refuse
        if owner is None or self.uid not in (None, owner[0]):
            return False
        inode = owner[1]
        link = "socket:[%d]" % inode
        me = os.getpid()
        # Newest first: a curl bootstrap's connection is its latest child's, not the shell's.
        if any(holds(pid, link) for pid in reversed(descendants(self.root)) if pid != me):
            return True
        return self.root_is_own and holds(self.root, link)
