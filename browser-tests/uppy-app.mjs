// The app the Uppy test bundles: stock @uppy/core and @uppy/aws-s3 pointed at ferry, with the
// bearer token added the way DESIGN.md says apps do it (by wrapping fetch).
import Uppy from "@uppy/core";
import AwsS3 from "@uppy/aws-s3";

window.uploadWithUppy = async ({ endpoint, token, files, multipartOver }) => {
  const original = window.fetch.bind(window);
  window.fetch = (input, init = {}) => {
    const url = typeof input === "string" ? input : input.url;
    if (url.startsWith(`${endpoint}/s3/`)) {
      const headers = new Headers(init.headers || {});
      headers.set("Authorization", `Bearer ${token}`);
      init = { ...init, headers };
    }
    return original(input, init);
  };
  const uppy = new Uppy({ autoProceed: false });
  uppy.use(AwsS3, { companionEndpoint: endpoint, shouldUseMultipart: (f) => f.size > multipartOver });
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.base64), (c) => c.charCodeAt(0));
    uppy.addFile({ name: f.name, type: "application/octet-stream", data: new Blob([bytes]) });
  }
  const result = await uppy.upload();
  return {
    successful: result.successful.map((f) => ({ name: f.name, key: f.s3Multipart?.key || f.meta?.key, uploadURL: f.uploadURL, response: f.response?.body || null })),
    failed: result.failed.map((f) => ({ name: f.name, error: String(f.error) })),
  };
};
