"""The environment fingerprint: session options and kernel-selecting CPU features in it,
and how two fingerprints differ, key by key."""

from __future__ import annotations

from mlwitness.ledger import environment
from mlwitness.model.runtime import SessionConfig

X86 = ("processor\t: 0\nvendor_id\t: GenuineIntel\n"
       "model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
       "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw "
       "avx512_vnni amx_tile amx_int8 amx_bf16 rdrand\n"
       "\n"
       "processor\t: 1\nmodel name\t: something else\nflags\t\t: fpu\n")
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def test_cpuinfo_keeps_the_flags_that_select_kernels() -> None:
    assert environment.cpuinfo(X86) == (
        ["amx_bf16", "amx_int8", "amx_tile", "avx", "avx2", "avx512_vnni", "avx512bw",
         "avx512f", "f16c", "fma", "sse4_1", "sse4_2", "ssse3"],
        "Intel(R) Xeon(R) Platinum 8480+")
    assert environment.cpuinfo(ARM) == (
        ["asimd", "asimddp", "asimdhp", "bf16", "fphp", "i8mm", "sve"],
        "cpu implementer 0x41 cpu part 0xd40")


def test_the_fingerprint_holds_the_session_options_when_a_model_ran() -> None:
    config = SessionConfig(intra_op_num_threads=2)
    env = environment.fingerprint(config)
    assert env["session_options"] == config.to_environment()
    assert env["execution_providers"] == ["CPUExecutionProvider"]
    assert env["cpu_features"] == environment.cpu()[0]
    assert "session_options" not in environment.fingerprint()  # no model session
    assert environment.env_id(env) != environment.env_id(environment.fingerprint(
        SessionConfig()))


def test_differences_are_named_by_dotted_key() -> None:
    old = environment.fingerprint(SessionConfig(intra_op_num_threads=2))
    new = environment.fingerprint(SessionConfig(enable_cpu_mem_arena=False))
    assert environment.differences(old, new) == {
        "session_options.intra_op_num_threads": [2, 1]}  # the arena is not numerics
    assert environment.differences(old, old) == {}


def test_an_environment_recorded_before_session_options_differs_in_each_of_them() -> None:
    new = environment.fingerprint(SessionConfig())
    old = {k: v for k, v in new.items() if k not in ("session_options", "cpu_features")}
    found = environment.differences(old, new)
    assert found["session_options.intra_op_num_threads"] == [None, 1]
    assert found["cpu_features"] == [None, new["cpu_features"]]
    assert "session_options.config_entries" not in found  # {} either way: nothing set


def test_cpu_features_differ_by_the_flags_one_side_has() -> None:
    old = {"cpu_features": ["avx", "avx2", "avx512f"], "cpu_model": "A"}
    new = {"cpu_features": ["avx", "avx2", "avx_vnni"], "cpu_model": "B"}
    assert environment.differences(old, new) == {"cpu_features": [["avx512f"], ["avx_vnni"]]}


def test_values_as_an_answer_shows_them() -> None:
    assert [environment.text(v) for v in (None, "1.32.0", 2, False, ["avx", "fma"], [],
                                          {"a": 1})] == [
        "(none)", "1.32.0", "2", "false", "avx fma", "(none)", '{"a":1}']
