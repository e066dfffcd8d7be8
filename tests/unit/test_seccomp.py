"""The sandbox's seccomp filter (sora.isolation.seccomp): its personality rules refuse exactly
what they should, and each spawn gets the program on a descriptor of its own. What the filter
does to a sandboxed function is tests/integration/test_seccomp.py's."""
from __future__ import annotations

import os
import random

from sora.isolation import seccomp

ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)   # Docker's: PER_LINUX(32), UNAME26, query


def test_personality_allows_only_the_plain_values_and_the_query():
    for persona in ALLOWED:
        assert not seccomp.personality_refused(persona), hex(persona)
    refused = [1 << bit for bit in range(32) if bit not in (3, 17)]
    refused += [0x0040000,     # ADDR_NO_RANDOMIZE
                0x0400000,     # READ_IMPLIES_EXEC
                0xFFFFFFF7, 0xFFFDFFFF, 0xFFFDFFF7,   # the query's bits less an allowed one
                0x7FFFFFFF, 0x80000000 | 0x0040000, 0x1]
    rng = random.Random(14)
    refused += [rng.getrandbits(32) for _ in range(20000)]
    for persona in refused:
        if persona not in ALLOWED:
            assert seccomp.personality_refused(persona), hex(persona)


def test_personality_reads_the_low_32_bits_as_the_kernel_does():
    assert seccomp.personality_refused((1 << 32) | 0x0040000)
    assert not seccomp.personality_refused(0xFFFFFFFF_FFFFFFFF)


def test_each_spawn_gets_the_program_on_its_own_descriptor():
    argv = ["bwrap", *seccomp.bwrap_options(), "--", "true"]
    with seccomp.passed_to(argv) as (first, first_fds), \
            seccomp.passed_to(argv) as (second, second_fds):
        assert first_fds != second_fds and len(first_fds) == 1
        assert first[2] == str(first_fds[0]) and seccomp.FD_SLOT not in first
        assert os.read(first_fds[0], 1 << 20) == seccomp.program()   # all of it, then EOF
        assert os.read(second_fds[0], 1 << 20) == seccomp.program()
    for fd in (*first_fds, *second_fds):   # closed once spawned
        try:
            os.fstat(fd)
        except OSError:
            continue
        raise AssertionError(f"fd {fd} left open")


def test_a_command_line_without_the_slot_is_left_alone():
    with seccomp.passed_to(["node", "index.js"]) as (argv, fds):
        assert argv == ["node", "index.js"] and fds == ()
