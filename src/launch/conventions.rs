// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! QEMU's conventions for vhost-user backend programs (QEMU's
//! `docs/interop/vhost-user.rst`, "Backend program conventions", and
//! `docs/interop/vhost-user.json`): `--socket-path`, `--fd` and
//! `--print-capabilities`, and the JSON file that tells management software about the
//! backend (`contrib/50-vhost-netmem.json`, installed under `share/qemu/vhost-user/`).

/// The vhost-user backend type, as `VHostUserBackendType` names it.
pub const BACKEND_TYPE: &str = "net";

/// What `--print-capabilities` prints: a `VHostUserBackendCapabilities` object. The
/// `net` type defines no features beyond its type.
pub fn capabilities_json() -> String {
    let caps = serde_json::json!({ "type": BACKEND_TYPE });
    // A json! object always serialises.
    serde_json::to_string_pretty(&caps).unwrap_or_default()
}

/// Whether the command line asks for `--print-capabilities`. The conventions say the
/// other options are then ignored, so this is looked for before they are parsed.
pub fn wants_capabilities(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--print-capabilities")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_name_the_net_type() {
        let v: serde_json::Value = serde_json::from_str(&capabilities_json()).unwrap();
        assert_eq!(v, serde_json::json!({"type": "net"}));
    }

    #[test]
    fn print_capabilities_is_found_among_any_options() {
        let args = |a: &[&str]| {
            a.iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        };
        assert!(wants_capabilities(args(&["vnm", "--print-capabilities"])));
        assert!(wants_capabilities(args(&[
            "vnm",
            "--bogus",
            "--print-capabilities"
        ])));
        assert!(!wants_capabilities(args(&["vnm", "--socket", "/s"])));
        assert!(!wants_capabilities(args(&["--print-capabilities"])));
    }
}
