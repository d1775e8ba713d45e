//! `deploy/`: every manifest parses, the core Kubernetes kinds validate against the API schema
//! (kubernetes-validate, strict), and the gateway's config in each overlay agrees with the manifests
//! and with the Strimzi resources (checks in `tests/python/deploy_check.py`).

mod common;

use std::process::Command;

use common::*;

#[test]
fn manifests_validate_and_agree_with_the_gateway_config() -> TestResult {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/deploy_check.py");
    let output = Command::new(python()?).args([script, deploy]).output()?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("deploy checks passed"), "{printed}");
    Ok(())
}

/// The image's runtime stage is distroless `cc-debian12`: glibc, libgcc and nothing else a binary
/// could load. The image cannot be built here (no container engine, and its base images are not
/// reachable), so this checks what it relies on: the binary needs no shared library beyond those (the
/// Kafka client, TLS and zlib are linked in), and the Dockerfile still names that runtime and a
/// non-root user.
#[test]
fn the_binary_needs_only_what_the_runtime_image_has() -> TestResult {
    const IN_DISTROLESS_CC: [&str; 7] = [
        "linux-vdso.so",
        "libgcc_s.so",
        "libm.so",
        "libc.so",
        "ld-linux-x86-64.so",
        "libpthread.so",
        "libdl.so",
    ];
    let output = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_courier"))
        .output()?;
    assert!(output.status.success(), "ldd failed: {output:?}");
    let listed = String::from_utf8(output.stdout)?;
    let foreign: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|line| !IN_DISTROLESS_CC.iter().any(|lib| line.contains(lib)))
        .collect();
    assert!(
        foreign.is_empty(),
        "shared libraries the runtime image lacks: {foreign:?}"
    );
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile"))?;
    assert!(dockerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"));
    assert!(dockerfile.contains("USER nonroot:nonroot"));
    Ok(())
}
