//! The Companion-style `/s3/…` routes Uppy calls, CORS, and the form POST — against a real
//! `ferry serve`, with the exact requests and field names `@uppy/aws-s3` 6.x uses. (The browser
//! tests run the real Uppy; these cover the contract's corners and hostile input.)
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;
const ORIGIN: &str = "http://app.example";

async fn s3(srv: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = srv.http.request(method, format!("{}/s3{path}", srv.url)).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn ok_json(res: reqwest::Response) -> Value {
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Creates an upload as Uppy does and PUTs `parts` (Uppy's equal parts, the last shorter) to the
/// URLs it is given; returns the upload id, key and the ETags.
async fn uppy_upload(srv: &TestServer, name: &str, parts: &[&[u8]]) -> (String, String, Vec<Value>) {
    let created = ok_json(
        s3(
            srv,
            reqwest::Method::POST,
            "/multipart",
            Some(json!({"filename": name, "type": "application/octet-stream", "metadata": {"name": name, "size": 7, "relativePath": null}})),
        )
        .await,
    )
    .await;
    let (id, key) = (created["uploadId"].as_str().unwrap().to_owned(), created["key"].as_str().unwrap().to_owned());
    let mut etags = Vec::new();
    for (i, bytes) in parts.iter().enumerate() {
        let n = i + 1;
        let signed =
            ok_json(s3(srv, reqwest::Method::GET, &format!("/multipart/{id}/{n}?key={key}"), None).await).await;
        assert!(signed["expires"].as_i64().unwrap() > 0);
        let res = srv.http.put(signed["url"].as_str().unwrap()).body(bytes.to_vec()).send().await.unwrap();
        assert_eq!(res.status(), 200);
        etags.push(json!({"PartNumber": n, "ETag": res.headers()["etag"].to_str().unwrap()}));
    }
    (id, key, etags)
}

#[tokio::test]
async fn an_uppy_multipart_upload_of_unknown_size_completes_from_its_parts() {
    let srv = TestServer::start(&[]);
    let whole = data(2 * 5 * MIB + 12_345, 1);
    let (a, rest) = whole.split_at(5 * MIB);
    let (b, c) = rest.split_at(5 * MIB);
    let (id, key, etags) = uppy_upload(&srv, "uppy/video.bin", &[a, b, c]).await;
    assert_eq!(key, "uppy/video.bin");

    // The part list Uppy reads after a reload.
    let listed = ok_json(s3(&srv, reqwest::Method::GET, &format!("/multipart/{id}?key={key}"), None).await).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!((listed[2]["PartNumber"].as_u64(), listed[2]["Size"].as_u64()), (Some(3), Some(12_345)));
    assert_eq!(listed[0]["ETag"], etags[0]["ETag"]);
    // A batch of URLs.
    let batch = ok_json(
        s3(&srv, reqwest::Method::GET, &format!("/multipart/{id}/batch?key={key}&partNumbers=1,2"), None).await,
    )
    .await;
    assert!(batch["presignedUrls"]["1"].as_str().unwrap().starts_with(&srv.url));
    assert!(batch["presignedUrls"]["2"].is_string());

    let done = ok_json(
        s3(&srv, reqwest::Method::POST, &format!("/multipart/{id}/complete?key={key}"), Some(json!({"parts": etags})))
            .await,
    )
    .await;
    assert_eq!(done["key"], key);
    assert_eq!(done["location"], format!("{}/v1/objects/uppy/video.bin", srv.url));
    let st: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!(st["state"], "completed");
    assert_eq!((st["size"].as_u64(), st["part_count"].as_u64()), (Some(whole.len() as u64), Some(3)));
    assert_eq!(st["result"]["sha256"], sha256_hex(&whole));
    let got = srv.get("/objects/uppy/video.bin").await.bytes().await.unwrap();
    assert_eq!(got.as_ref(), &whole[..]);
    assert_eq!(st["metadata"]["size"], "7", "numbers in Uppy's metadata are kept as text");
    assert!(st["metadata"].get("relativePath").is_none(), "nulls are left out");
}

#[tokio::test]
async fn uppy_uploads_whose_parts_do_not_line_up_are_refused_and_abort_frees_them() {
    let srv = TestServer::start(&[]);
    let five = data(5 * MIB, 2);
    let small = data(100_000, 3);
    // A short part in the middle cannot be placed.
    let (id, key, etags) = uppy_upload(&srv, "odd.bin", &[&five, &small, &five]).await;
    let res =
        s3(&srv, reqwest::Method::POST, &format!("/multipart/{id}/complete?key={key}"), Some(json!({"parts": etags})))
            .await;
    assert_error(res, 400, "irregular_parts").await;
    // A gap.
    let gap = vec![etags[0].clone(), etags[2].clone()];
    let res =
        s3(&srv, reqwest::Method::POST, &format!("/multipart/{id}/complete?key={key}"), Some(json!({"parts": gap})))
            .await;
    assert_error(res, 400, "missing_parts").await;
    assert_error(
        s3(&srv, reqwest::Method::GET, &format!("/multipart/{id}?key=other"), None).await,
        400,
        "key_mismatch",
    )
    .await;
    assert_error(
        s3(&srv, reqwest::Method::GET, &format!("/multipart/{id}/0?key={key}"), None).await,
        400,
        "invalid_part_number",
    )
    .await;
    assert_error(
        s3(&srv, reqwest::Method::GET, &format!("/multipart/{id}/10001?key={key}"), None).await,
        400,
        "invalid_part_number",
    )
    .await;
    assert_error(
        s3(&srv, reqwest::Method::GET, &format!("/multipart/{id}/batch?key={key}&partNumbers=1,x"), None).await,
        400,
        "invalid_part_number",
    )
    .await;

    // Abort: `{}`, the parts are gone, and listing answers 4xx so Uppy starts afresh.
    let aborted = ok_json(s3(&srv, reqwest::Method::DELETE, &format!("/multipart/{id}?key={key}"), None).await).await;
    assert_eq!(aborted, json!({}));
    assert!(!srv.data_dir().join("uploads").join(&id).exists());
    let res = s3(&srv, reqwest::Method::GET, &format!("/multipart/{id}?key={key}"), None).await;
    assert_error(res, 404, "upload_not_open").await;

    // The token is needed, and bad bodies are JSON errors.
    let res = srv.http.post(format!("{}/s3/multipart", srv.url)).json(&json!({"filename": "x"})).send().await.unwrap();
    assert_error(res, 401, "unauthorized").await;
    assert_error(
        s3(&srv, reqwest::Method::POST, "/multipart", Some(json!({"filename": "../x"}))).await,
        400,
        "invalid_name",
    )
    .await;
    assert_error(s3(&srv, reqwest::Method::POST, "/multipart", Some(json!({"type": "x"}))).await, 400, "invalid_json")
        .await;
}

#[tokio::test]
async fn an_unknown_size_part_needs_a_length_and_may_not_exceed_the_part_limit() {
    let srv = TestServer::start(&[]);
    let (id, key, _) = uppy_upload(&srv, "len.bin", &[]).await;
    let signed = ok_json(s3(&srv, reqwest::Method::GET, &format!("/multipart/{id}/1?key={key}"), None).await).await;
    let url = signed["url"].as_str().unwrap();
    // Chunked, with no Content-Length.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"abc"))]);
    let res = srv.http.put(url).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_error(res, 411, "length_required").await;
    let res = srv.http.put(url).header("content-length", (6u64 << 30).to_string()).body(Vec::new()).send().await;
    // The server refuses before reading a byte; the client may see the refusal or a reset.
    if let Ok(res) = res {
        assert_eq!(res.status(), 413);
    }
    let listed = ok_json(s3(&srv, reqwest::Method::GET, &format!("/multipart/{id}?key={key}"), None).await).await;
    assert_eq!(listed, json!([]), "nothing was stored");
}

#[tokio::test]
async fn small_files_take_the_signed_form_post() {
    let srv = TestServer::start(&[]);
    let body = data(300_000, 4);
    let params = ok_json(
        s3(&srv, reqwest::Method::GET, "/params?filename=notes%2Fa.txt&type=text%2Fplain&metadata[owner]=ann", None)
            .await,
    )
    .await;
    assert_eq!(params["method"], "POST");
    let url = params["url"].as_str().unwrap().to_owned();
    let fields = params["fields"].as_object().unwrap().clone();
    assert_eq!(fields["key"], "notes/a.txt");

    let form = |fields: &serde_json::Map<String, Value>, file: Vec<u8>| {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.clone(), v.as_str().unwrap().to_owned());
        }
        form.part("file", reqwest::multipart::Part::bytes(file).file_name("a.txt"))
    };
    // Tampering with any signed field is refused, and stores nothing.
    let mut other_key = fields.clone();
    other_key["key"] = json!("notes/b.txt");
    let res = srv.http.post(&url).multipart(form(&other_key, body.clone())).send().await.unwrap();
    assert_error(res, 400, "key_mismatch").await;
    let mut forged = fields.clone();
    let policy = forged["policy"].as_str().unwrap().to_owned();
    forged["policy"] = json!(format!("{}A", &policy[..policy.len() - 1]));
    let res = srv.http.post(&url).multipart(form(&forged, body.clone())).send().await.unwrap();
    assert_error(res, 403, "invalid_signature").await;
    let mut unsigned = fields.clone();
    unsigned.remove("x-ferry-signature");
    let res = srv.http.post(&url).multipart(form(&unsigned, body.clone())).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let no_file = fields
        .iter()
        .fold(reqwest::multipart::Form::new(), |f, (k, v)| f.text(k.clone(), v.as_str().unwrap().to_owned()));
    assert_error(srv.http.post(&url).multipart(no_file).send().await.unwrap(), 400, "invalid_form").await;
    assert_error(srv.http.post(&url).body("not a form").send().await.unwrap(), 400, "invalid_form").await;
    assert_error(srv.get("/objects/notes/a.txt").await, 404, "object_not_found").await;

    let res = srv.http.post(&url).multipart(form(&fields, body.clone())).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert!(res.headers().contains_key("etag"));
    let got = srv.get("/objects/notes/a.txt").await;
    assert_eq!(got.headers()["content-type"], "text/plain");
    assert_eq!(got.bytes().await.unwrap().as_ref(), &body[..]);
    let list: Value = srv.get("/uploads?state=completed").await.json().await.unwrap();
    let id = list["uploads"][0]["upload_id"].as_str().unwrap();
    let st: Value = srv.get(&format!("/uploads/{id}")).await.json().await.unwrap();
    assert_eq!(
        (st["result"]["sha256"].as_str(), st["metadata"]["owner"].as_str()),
        (Some(sha256_hex(&body).as_str()), Some("ann"))
    );
}

#[tokio::test]
async fn cors_preflights_need_no_token_and_responses_expose_etag() {
    let srv = TestServer::start(&["--cors-origin", ORIGIN]);
    let body = data(70_000, 5);
    let created = srv.create("cors.bin", &body, 64 * 1024).await;
    let part_url = created["parts"][0]["url"].as_str().unwrap().to_owned();
    for url in [format!("{}/s3/multipart", srv.url), srv.api("/uploads"), part_url.clone()] {
        let res = srv
            .http
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", ORIGIN)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204, "{url}");
        let h = res.headers();
        assert_eq!(h["access-control-allow-origin"], ORIGIN);
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains("PUT") && methods.contains("DELETE"), "{methods}");
        let headers = h["access-control-allow-headers"].to_str().unwrap();
        assert!(headers.contains("authorization") && headers.contains("content-type"), "{headers}");
    }
    // A part PUT from the app: the ETag is readable by its script.
    let res = srv.http.put(&part_url).header("origin", ORIGIN).body(body[..64 * 1024].to_vec()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], ORIGIN);
    assert!(res.headers()["access-control-expose-headers"].to_str().unwrap().contains("etag"));
    // Errors carry the header too, so the app can read them.
    let res = srv.http.get(srv.api("/uploads")).header("origin", ORIGIN).send().await.unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], ORIGIN);
    assert_error(res, 401, "unauthorized").await;
    // Another origin gets nothing.
    let res = srv
        .http
        .request(reqwest::Method::OPTIONS, srv.api("/uploads"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    assert_error(res, 403, "origin_not_allowed").await;
    let res = srv
        .http
        .get(srv.api("/uploads"))
        .bearer_auth(TOKEN)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn the_upload_page_is_served_from_the_binary() {
    let srv = TestServer::start(&[]);
    let page = srv.http.get(format!("{}/", srv.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    for asset in ["/app.js", "/sha256.js", "/style.css"] {
        assert!(html.contains(asset), "{asset}");
        let res = srv.http.get(format!("{}{asset}", srv.url)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{asset}");
        assert!(!res.text().await.unwrap().is_empty());
    }
}
