//! Any text as each of S3's answers: the parsers never panic, and what they accept holds
//! together (a listing's next marker always moves forward; an S3 error keeps its status).
#![no_main]

use ferry_s3::xml;
use ferry_store::StoreError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, u32, &str)| {
    let (status, marker, text) = input;
    let _ = xml::objects_page(text);
    if let Ok(page) = xml::parts_page(text, marker) {
        assert!(page.next_marker.is_none_or(|n| n > marker), "the listing would not advance");
    }
    let _ = xml::upload_id(text);
    let _ = xml::copied_etag(text);
    let _ = xml::completed(text);
    if let StoreError::Remote { status: s, .. } = xml::s3_error(status, text, "fuzzing") {
        assert_eq!(s, status);
    }
});
