//! The config parser and validator on arbitrary text (bytes that are not UTF-8 go in lossily).
//!
//! Asserts: no panic; an error has at least one issue, and every issue's line and column lie
//! within the input (1-based; 0 only when unknown, both at once); a config that validates obeys
//! the rules validation promises (service names well-formed and unique, VIP and endpoint ports
//! non-zero, weights 1..=1000, and so on).
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use weir_core::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("fuzz.toml")) {
        Err(err) => {
            assert!(!err.issues.is_empty(), "an error without issues");
            let lines: Vec<&str> = text.split('\n').collect();
            for issue in &err.issues {
                assert!(
                    !issue.message.is_empty(),
                    "issue without a message: {issue:?}"
                );
                if issue.line == 0 {
                    assert_eq!(issue.column, 0, "column without a line: {issue:?}");
                    continue;
                }
                assert!(issue.line <= lines.len(), "line past the input: {issue:?}");
                let line = lines[issue.line - 1];
                assert!(
                    (1..=line.len() + 1).contains(&issue.column),
                    "column past its line ({} bytes): {issue:?}",
                    line.len()
                );
            }
        }
        Ok(config) => {
            let mut names = HashSet::new();
            let mut vips = HashSet::new();
            assert_ne!(config.proxy.listen.port(), 0);
            assert_ne!(config.admin.listen.port(), 0);
            for s in &config.services {
                assert!(
                    !s.name.is_empty() && s.name.len() <= 63,
                    "bad name {:?}",
                    s.name
                );
                assert!(
                    s.name.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'-' | b'_' | b'.')),
                    "bad name {:?}",
                    s.name
                );
                assert!(names.insert(s.name.as_str()), "duplicate name {:?}", s.name);
                assert_ne!(s.vip.port(), 0, "VIP port 0 in {:?}", s.name);
                assert!(vips.insert(s.vip), "duplicate VIP {}", s.vip);
                assert_ne!(s.vip, config.proxy.listen);
                if let Some(l) = s.listen {
                    assert_ne!(l.port(), 0);
                }
                for e in &s.endpoints {
                    assert_ne!(e.addr.port(), 0);
                    assert!((1..=1000).contains(&e.weight));
                }
                assert!((1..=10).contains(&s.retry.attempts));
                assert!((0.0..=10.0).contains(&s.retry.budget_ratio));
                assert!(!s.timeouts.connect.is_zero() && !s.timeouts.request.is_zero());
                if let Some(a) = s.timeouts.attempt {
                    assert!(!a.is_zero() && a <= s.timeouts.request);
                }
            }
        }
    }
});
