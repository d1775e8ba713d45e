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
