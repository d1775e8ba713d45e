//! `deploy/`: every manifest parses, the core Kubernetes kinds validate against the API schema
//! (kubernetes-validate, strict), and the gateway's config in each overlay agrees with the manifests
//! and with the Strimzi resources (checks in `tests/python/deploy_check.py`); the Helm chart lints,
//! renders valid objects whose config this binary loads, and makes what the kustomize overlays make
//! (`tests/python/helm_check.py`). The image itself is built and run by `tests/image.rs`.

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

/// `deploy/helm/courier`, through Helm 4's own library (helm-python-sdk): lint, a rendering per
/// backend and with TLS and authentication on, each object valid, each courier.toml loaded by
/// `courier config check` (this binary), and the region values against the kustomize overlays.
#[test]
fn helm_chart_renders_what_the_gateway_and_the_overlays_agree_with() -> TestResult {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/helm_check.py");
    let output = Command::new(python()?)
        .args([script, deploy, env!("CARGO_BIN_EXE_courier")])
        .output()?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("helm checks passed"), "{printed}");
    Ok(())
}

/// The image's runtime stage is distroless `cc-debian12`: glibc, libgcc and nothing else a binary
/// could load. Its base images are not reachable here (`tests/image.rs` builds the same image from
/// this host's libraries instead), so this checks what the Dockerfile relies on: the binary needs no
/// shared library beyond those (the Kafka client, TLS and zlib are linked in), and the Dockerfile
/// still names that runtime, the non-root user, the default config and the version
/// `deploy/image/build` gives its image.
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
    for line in [
        "FROM gcr.io/distroless/cc-debian12:nonroot",
        "USER 65532:65532",
        "COPY deploy/image/courier.toml /etc/courier/courier.toml",
        concat!("ARG VERSION=", env!("CARGO_PKG_VERSION")),
        "ENTRYPOINT [\"/usr/local/bin/courier\"]",
        "CMD [\"serve\", \"--config\", \"/etc/courier/courier.toml\"]",
    ] {
        assert!(
            dockerfile.lines().any(|l| l == line),
            "deploy/Dockerfile lacks {line:?}"
        );
    }
    Ok(())
}
