//! The image's binary holds the operator and the simulator, not the developer tools: built the
//! way the Dockerfile builds it (its `cargo build` line, run as written, into a target directory
//! of its own), it has no `demo` or `bench` command, and it is static (the image has no C
//! library).

mod support;

use std::process::Command;

#[test]
fn the_binary_built_as_the_dockerfile_builds_it_has_no_dev_tools_and_is_static() {
    let (_, args) = support::shipped::dockerfile_build_line();
    assert!(
        args.iter().any(|a| a == "--release") && args.iter().any(|a| a == "--no-default-features"),
        "{args:?}"
    );
    let binary = support::shipped::shipped_binary();
    let help = Command::new(&binary)
        .arg("--help")
        .output()
        .expect("running the shipped binary");
    let help = String::from_utf8_lossy(&help.stdout);
    for present in ["run", "simulate", "crd"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(present)),
            "the shipped binary lacks `{present}`:\n{help}"
        );
    }
    for absent in ["demo", "bench"] {
        assert!(
            !help.lines().any(|l| l.trim_start().starts_with(absent)),
            "the shipped binary has `{absent}`:\n{help}"
        );
        let out = Command::new(&binary).arg(absent).output().unwrap();
        assert!(!out.status.success(), "`{absent}` ran in the shipped binary");
    }
    // No program interpreter (ELF PT_INTERP): nothing to load at start, so it runs on an empty
    // base image.
    assert!(
        !has_interpreter(&std::fs::read(&binary).unwrap()),
        "the shipped binary is dynamically linked"
    );
}

/// Whether a 64-bit little-endian ELF file has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3
    })
}
