"""The seccomp filter of a sandbox: system calls a function and its setup never need, refused.

bubblewrap loads it (`--seccomp FD`) into the sandboxed process just before it runs the
command, after making the sandbox's namespaces and mounts, so it binds everything the function
or its setup runs and cannot be removed. It is a deny-list (everything else is allowed), in the
spirit of Docker's default profile and of the filter Flatpak hands bubblewrap, refusing with
EPERM what would let code reach past its sandbox or at the kernel's rarer corners:
- new namespaces: `unshare`, `setns`, `clone` with a CLONE_NEW* flag. A nested user namespace
  (`unshare -Ur`) would give the function root over new mount and network namespaces of its
  own, and with them most of the kernel's attack surface. `clone3` takes its flags behind a
  pointer that a filter cannot read, so it fails with ENOSYS instead: glibc (threads,
  posix_spawn) then falls back to `clone`, whose flags the filter does read (Docker and
  Flatpak do the same);
- mounts, old API and new (`mount`, `fsopen`, `open_tree`, ...), `chroot`, `pivot_root`;
- the kernel keyring, bpf, perf events, io_uring, userfaultfd: reachable by an unprivileged
  uid and a frequent source of kernel exploits; Docker refuses them too;
- other processes' memory: `ptrace`, `process_vm_readv`/`writev`, `pidfd_getfd`, `kcmp`;
- the machine's: modules, kexec, reboot, swap, accounting, clocks, quotas, I/O ports, the kernel
  log, NUMA placement, file handles (`open_by_handle_at` reads any file of a mount by inode);
- `personality` flags that weaken the process (ADDR_NO_RANDOMIZE turns off ASLR,
  READ_IMPLIES_EXEC makes data executable): only Docker's set is allowed, the plain Linux one,
  PER_LINUX32, UNAME26, and the query 0xffffffff;
- `ioctl(TIOCSTI)` and `ioctl(TIOCLINUX)`, which type into a terminal (the sandbox's stdio are
  pipes, so this is depth, as in bubblewrap's own demo filter).

The filter is built with libseccomp (Debian's libseccomp2) through `pyseccomp`, and compiled
to BPF once per process (`program()`). bubblewrap reads the program from a file descriptor to
its end, so each sandbox gets a pipe of its own holding it (`passed_to`). The command line says
`--seccomp` with FD_SLOT, not a number: a pre-started runtime's kind is its whole command line
(sora.runtimes.pool), so the command line must be the same whichever descriptor the
program gets at each start; the slot is filled in just before the process is spawned.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
from collections.abc import Iterator

# Stands for the program's descriptor in a sandbox's command line until it is spawned.
FD_SLOT = "{sora-seccomp-fd}"

REFUSED = (
    # Mounts (the old API, the new one, and leaving the root).
    "mount", "umount", "umount2", "pivot_root", "chroot", "move_mount", "fsopen", "fsmount",
    "fsconfig", "fspick", "open_tree", "mount_setattr",
    # Namespaces (clone's CLONE_NEW* flags are below; clone3 gets ENOSYS).
    "unshare", "setns",
    # The kernel's keyring, bpf, perf, io_uring, userfaultfd.
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "userfaultfd",
    # Other processes.
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
    # The machine.
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "query_module", "get_kernel_syms", "reboot", "swapon", "swapoff", "acct",
    "syslog", "settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex", "iopl",
    "ioperm", "modify_ldt", "vm86", "vm86old", "quotactl", "quotactl_fd", "lookup_dcookie",
    "open_by_handle_at", "name_to_handle_at", "uselib", "nfsservctl", "_sysctl", "sysfs",
    "ustat", "vhangup", "mbind", "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node",
    "migrate_pages", "move_pages",
)
CLONE_NEW_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
                   "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
                   "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                   "CLONE_NEWNET": 0x40000000}
TERMINAL_IOCTLS = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}
# personality(): the bits a process may set (PER_LINUX32, UNAME26), and the query.
PERSONALITY_BITS_ALLOWED = (3, 17)
PERSONALITY_QUERY = 0xFFFFFFFF
UNKNOWN_SYSCALL = -1   # libseccomp's __NR_SCMP_ERROR
# A pipe holds this much without a reader (Linux's default); the program is ~3 KB.
PIPE_CAPACITY = 65536


def personality_rules() -> list[tuple[int, int]]:
    """personality(persona) is refused where (persona & mask) == value, for each (mask, value).

    A rule can compare an argument only once, so "not one of the allowed values" is spelled
    with bit pairs: bit i set and bit j clear, for each disallowed bit i and the next disallowed
    bit j around a cycle, plus bit 31 set with an allowed bit clear. A value with a disallowed
    bit set matches one unless every bit is set, which is the query; an allowed value (only
    allowed bits set, or the query) matches none. tests/unit/test_seccomp.py checks both."""
    disallowed = [bit for bit in range(32) if bit not in PERSONALITY_BITS_ALLOWED]
    pairs = [(bit, disallowed[(k + 1) % len(disallowed)]) for k, bit in enumerate(disallowed)]
    pairs += [(31, bit) for bit in PERSONALITY_BITS_ALLOWED]
    return [((1 << i) | (1 << j), 1 << i) for i, j in pairs]


def personality_refused(persona: int) -> bool:
    """What the rules do with one value (the kernel reads the low 32 bits)."""
    return any(persona & mask == value for mask, value in personality_rules())


def unavailable_reason() -> str | None:
    """Why the filter cannot be built on this host (None when it can)."""
    try:
        program()
    except OSError as exc:
        return (f"the sandbox's seccomp filter could not be built with libseccomp ({exc}); "
                "expected libseccomp2 (apt-get install libseccomp2) and pyseccomp")
    return None


@functools.lru_cache(maxsize=1)
def program() -> bytes:
    """The filter compiled to BPF for this machine's architecture (and, on x86-64, for the
    32-bit and x32 system call tables too, so a 32-bit program or `int 0x80` meets the same
    rules rather than an open door)."""
    try:   # here: a host without libseccomp fails where the filter is needed, clearly
        import pyseccomp as seccomp
    except (ImportError, RuntimeError) as exc:   # RuntimeError: no libseccomp.so found
        raise OSError(errno.ENOENT, f"cannot load libseccomp: {exc}") from exc

    refuse = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    if seccomp.system_arch() == seccomp.Arch.X86_64:
        for arch in (seccomp.Arch.X86, seccomp.Arch.X32):
            rules.add_arch(arch)
    for name in REFUSED:
        # -1: unknown to this libseccomp on any architecture (newer than it), so nothing to add;
        # a call absent from one architecture only (umount, vm86) is added where it exists.
        if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) != UNKNOWN_SYSCALL:
            rules.add_rule(refuse, name)
    # clone's flags are its first argument here (the second on s390, which Sora does not run on).
    for flag in CLONE_NEW_FLAGS.values():
        rules.add_rule(refuse, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for mask, value in personality_rules():
        rules.add_rule(refuse, "personality", seccomp.Arg(0, seccomp.MASKED_EQ, mask, value))
    for request in TERMINAL_IOCTLS.values():
        # The kernel reads the request as 32 bits: high bits set must not slip past.
        rules.add_rule(refuse, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, request))
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.seek(0)
        compiled = out.read()
    if not 0 < len(compiled) <= PIPE_CAPACITY:
        raise OSError(errno.E2BIG, f"the compiled filter is {len(compiled)} bytes")
    return compiled


def bwrap_options() -> list[str]:
    """bubblewrap's options that load the filter (the slot is filled in by `passed_to`)."""
    return ["--seccomp", FD_SLOT]


@contextlib.contextmanager
def passed_to(argv: list[str]) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """`argv` with its seccomp slot (if any) filled in, and the descriptors to pass the child
    (`pass_fds`): a pipe holding the program, closed here once the child is spawned."""
    if FD_SLOT not in argv:
        yield argv, ()
        return
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, program())   # fits in the pipe: no reader needed yet
        os.close(write_fd)
        write_fd = -1
        yield [str(read_fd) if arg == FD_SLOT else arg for arg in argv], (read_fd,)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
