//! The XML of S3's answers, read leniently (S3-compatible services differ: some use a namespace
//! and some none, some list parts without ETags, some never paginate), and the one body ferry
//! writes (CompleteMultipartUpload). Pure functions of text: the fuzz target `s3_xml` feeds them
//! anything, and none may panic.

use ferry_core::api::PartInfo;
use ferry_core::etag::{bare_etag, quote_etag};
use ferry_store::StoreError;

/// One object of a ListObjectsV2 page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub modified: Option<time::OffsetDateTime>,
}

/// A ListObjectsV2 page and the token of the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectsPage {
    pub listed: Vec<Listed>,
    pub next_token: Option<String>,
}

/// A ListParts page and the marker of the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartsPage {
    pub parts: Vec<PartInfo>,
    pub next_marker: Option<u32>,
}

fn parse<'a>(text: &'a str, what: &str) -> Result<roxmltree::Document<'a>, StoreError> {
    roxmltree::Document::parse(text.trim_start())
        .map_err(|e| malformed("MalformedXML", format!("{what}: the answer is not XML: {e}")))
}

fn malformed(code: &str, message: String) -> StoreError {
    StoreError::Remote { status: 200, code: code.to_owned(), message }
}

/// The child elements named `name`, whatever their namespace (S3 answers use one, some servers
/// none).
fn children<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    n.children().filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn child_text<'a>(n: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    n.children().find(|c| c.is_element() && c.tag_name().name() == name).map(|c| c.text().unwrap_or(""))
}

fn etag_of(n: roxmltree::Node<'_, '_>) -> String {
    child_text(n, "ETag").map(|e| quote_etag(bare_etag(e))).unwrap_or_default()
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// An answer that came with 200 but describes an error (CompleteMultipartUpload and
/// UploadPartCopy may do that).
fn refuse_error_root(doc: &roxmltree::Document<'_>, text: &str, what: &str) -> Result<(), StoreError> {
    if doc.root_element().tag_name().name() == "Error" {
        return Err(s3_error(500, text, what));
    }
    Ok(())
}

/// A ListObjectsV2 answer.
pub fn objects_page(text: &str) -> Result<ObjectsPage, StoreError> {
    let doc = parse(text, "listing objects")?;
    let root = doc.root_element();
    let listed = children(root, "Contents")
        .map(|c| Listed {
            key: child_text(c, "Key").unwrap_or_default().to_owned(),
            size: child_text(c, "Size").and_then(|s| s.parse().ok()).unwrap_or(0),
            etag: etag_of(c),
            modified: child_text(c, "LastModified").and_then(parse_time),
        })
        .collect();
    let truncated = child_text(root, "IsTruncated") == Some("true");
    let next_token = child_text(root, "NextContinuationToken").filter(|t| truncated && !t.is_empty());
    Ok(ObjectsPage { listed, next_token: next_token.map(str::to_owned) })
}

/// A ListParts answer for a request that started after `marker`.
pub fn parts_page(text: &str, marker: u32) -> Result<PartsPage, StoreError> {
    let doc = parse(text, "listing parts")?;
    let root = doc.root_element();
    let mut parts = Vec::new();
    for p in children(root, "Part") {
        let number = child_text(p, "PartNumber").and_then(|s| s.parse::<u32>().ok());
        let size = child_text(p, "Size").and_then(|s| s.parse::<u64>().ok());
        let (Some(part_number), Some(size)) = (number, size) else {
            return Err(malformed("MalformedListParts", "a listed part has no number or size".to_owned()));
        };
        parts.push(PartInfo { part_number, size, etag: etag_of(p) });
    }
    let truncated = child_text(root, "IsTruncated") == Some("true");
    let next = child_text(root, "NextPartNumberMarker").and_then(|s| s.parse::<u32>().ok());
    // A marker that does not advance would loop forever.
    let next_marker = next.filter(|n| truncated && *n > marker);
    Ok(PartsPage { parts, next_marker })
}

/// The `UploadId` of a CreateMultipartUpload answer.
pub fn upload_id(text: &str) -> Result<String, StoreError> {
    let what = "creating a multipart upload";
    let doc = parse(text, what)?;
    let id = child_text(doc.root_element(), "UploadId").filter(|s| !s.is_empty());
    id.map(str::to_owned)
        .ok_or_else(|| malformed("MissingUploadId", "the answer to CreateMultipartUpload has no UploadId".to_owned()))
}

/// The quoted ETag of an UploadPartCopy answer.
pub fn copied_etag(text: &str) -> Result<String, StoreError> {
    let what = "copying a part into the object";
    let doc = parse(text, what)?;
    refuse_error_root(&doc, text, what)?;
    let etag = child_text(doc.root_element(), "ETag").filter(|e| !e.is_empty());
    etag.map(|e| quote_etag(bare_etag(e)))
        .ok_or_else(|| malformed("MissingETag", format!("{what}: the answer to UploadPartCopy has no ETag")))
}

/// Checks a CompleteMultipartUpload answer.
pub fn completed(text: &str) -> Result<(), StoreError> {
    let what = "completing a multipart upload";
    let doc = parse(text, what)?;
    refuse_error_root(&doc, text, what)
}

/// The error an S3 answer with `status` describes, by its `<Code>` where there is one.
pub fn s3_error(status: u16, body: &str, what: &str) -> StoreError {
    let doc = roxmltree::Document::parse(body.trim_start()).ok();
    let root = doc.as_ref().map(|d| d.root_element());
    let code = root.and_then(|r| child_text(r, "Code")).unwrap_or_default().to_owned();
    let message = root.and_then(|r| child_text(r, "Message")).unwrap_or_default().to_owned();
    match (status, code.as_str()) {
        (_, "NoSuchUpload") => StoreError::NoSuchUpload,
        (_, "NoSuchKey") | (404, "") => StoreError::NoSuchObject,
        (_, "PreconditionFailed" | "ConditionalRequestConflict") | (412, _) => StoreError::ConditionFailed,
        (status, _) => StoreError::Remote {
            status,
            code: if code.is_empty() { format!("HTTP{status}") } else { code },
            message: if message.is_empty() { what.to_owned() } else { format!("{what}: {message}") },
        },
    }
}

/// The body of CompleteMultipartUpload.
pub fn complete_body(parts: &[PartInfo]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for p in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            p.part_number,
            escape(&quote_etag(bare_etag(&p.etag)))
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_errors_by_code() {
        let xml = |code: &str| format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>");
        assert!(matches!(s3_error(404, &xml("NoSuchUpload"), "x"), StoreError::NoSuchUpload));
        assert!(matches!(s3_error(404, &xml("NoSuchKey"), "x"), StoreError::NoSuchObject));
        assert!(matches!(s3_error(404, "", "x"), StoreError::NoSuchObject));
        assert!(matches!(s3_error(412, "", "x"), StoreError::ConditionFailed));
        assert!(matches!(s3_error(409, &xml("ConditionalRequestConflict"), "x"), StoreError::ConditionFailed));
        match s3_error(403, &xml("SignatureDoesNotMatch"), "storing") {
            StoreError::Remote { status: 403, code, message } => {
                assert_eq!(code, "SignatureDoesNotMatch");
                assert_eq!(message, "storing: m");
            }
            other => panic!("{other:?}"),
        }
        match s3_error(502, "<html>not xml", "listing") {
            StoreError::Remote { status: 502, code, .. } => assert_eq!(code, "HTTP502"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn complete_body_escapes_etags() {
        let parts = [PartInfo { part_number: 1, size: 5, etag: "\"a<b\"".into() }];
        assert_eq!(
            complete_body(&parts),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;a&lt;b&quot;</ETag></Part></CompleteMultipartUpload>"
        );
    }

    #[test]
    fn pages_with_and_without_a_namespace() {
        let ns = r#"<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
            <IsTruncated>true</IsTruncated><NextContinuationToken>t2</NextContinuationToken>
            <Contents><Key>a/b</Key><Size>5</Size><ETag>"e1"</ETag><LastModified>2026-01-02T03:04:05.000Z</LastModified></Contents>
            <Contents><Key>c</Key><Size>x</Size></Contents></ListBucketResult>"#;
        let page = objects_page(ns).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("t2"));
        assert_eq!(page.listed.len(), 2);
        assert_eq!(
            (page.listed[0].key.as_str(), page.listed[0].size, page.listed[0].etag.as_str()),
            ("a/b", 5, "\"e1\"")
        );
        assert!(page.listed[0].modified.is_some());
        assert_eq!((page.listed[1].size, page.listed[1].etag.as_str()), (0, ""), "lenient about what is missing");
        let bare = "<ListBucketResult><IsTruncated>false</IsTruncated><NextContinuationToken>t</NextContinuationToken></ListBucketResult>";
        assert_eq!(objects_page(bare).unwrap(), ObjectsPage { listed: vec![], next_token: None });

        let parts = "<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>\
            <Part><PartNumber>1</PartNumber><Size>7</Size></Part><Part><PartNumber>2</PartNumber><Size>3</Size><ETag>x</ETag></Part></ListPartsResult>";
        let page = parts_page(parts, 0).unwrap();
        assert_eq!(page.next_marker, Some(2));
        assert_eq!(page.parts[0], PartInfo { part_number: 1, size: 7, etag: String::new() });
        assert_eq!(page.parts[1].etag, "\"x\"");
        assert_eq!(parts_page(parts, 2).unwrap().next_marker, None, "a marker that does not advance ends the listing");
        let broken = "<ListPartsResult><Part><PartNumber>1</PartNumber></Part></ListPartsResult>";
        assert!(matches!(parts_page(broken, 0), Err(StoreError::Remote { .. })));
    }

    #[test]
    fn answers_that_say_no() {
        assert_eq!(upload_id("<R><UploadId>u-1</UploadId></R>").unwrap(), "u-1");
        assert!(upload_id("<R><UploadId></UploadId></R>").is_err());
        assert!(upload_id("not xml").is_err());
        assert_eq!(copied_etag("<CopyPartResult><ETag>\"c\"</ETag></CopyPartResult>").unwrap(), "\"c\"");
        let error = "<Error><Code>InternalError</Code><Message>busy</Message></Error>";
        assert!(matches!(copied_etag(error), Err(StoreError::Remote { status: 500, .. })));
        assert!(matches!(completed(error), Err(StoreError::Remote { status: 500, .. })));
        assert!(completed("<CompleteMultipartUploadResult/>").is_ok());
    }
}
