//! Any signed-URL query against any scope: never panics, and nothing verifies unless it is exactly
//! the signature ferry would have issued for that method, scope and expiry.
#![no_main]

use ferry_core::sign::{Scope, Signer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u32, Option<&str>, Option<&str>, bool, u64)| {
    let (id, part_number, expires, signature, object, now) = input;
    let signer = Signer::new(b"fuzz-secret".to_vec());
    let scope = if object { Scope::Object { key: id } } else { Scope::Part { upload_id: id, part_number } };
    if signer.verify_query("PUT", scope, expires, signature, now).is_ok() {
        let exp: u64 = expires.and_then(|e| e.parse().ok()).expect("accepted expiry parses");
        assert!(now < exp, "expired URL accepted");
        let expected = signer.sign("PUT", scope, exp);
        assert!(signature.is_some_and(|s| s.eq_ignore_ascii_case(&expected)), "forged signature accepted");
    }
    // A genuine signature verifies until it expires.
    let exp = now.saturating_add(1);
    let good = signer.sign("GET", scope, exp);
    assert!(signer.verify_query("GET", scope, Some(&exp.to_string()), Some(&good), now).is_ok() || exp == now);
});
