//! Object-store errors as one sentence with the bucket, the endpoint and the fix.

/// Why an object-store call failed, as one sentence with the bucket, endpoint and fix;
/// `table` names the destination's settings (`remote_storage`, `destination.<name>`).
pub fn explain(
    e: &opendal::Error,
    table: &str,
    bucket: &str,
    endpoint: &str,
    key_id: Option<&str>,
) -> String {
    let chain = crate::exit::error_chain(e);
    let has = |n: &str| chain.contains(n);
    let key = key_id.unwrap_or("(from the provider's chain)");
    if has("NoSuchBucket") {
        format!("bucket {bucket} does not exist at {endpoint}; create it or fix {table}.bucket")
    } else if has("ContainerNotFound") {
        format!(
            "container {bucket} does not exist at {endpoint}; create it or fix {table}.container"
        )
    } else if has("InvalidAccessKeyId") {
        format!("access key {key} is not known at {endpoint}; check the credentials")
    } else if has("SignatureDoesNotMatch") {
        format!(
            "the secret key for access key {key} is wrong (signature does not match at \
             {endpoint}); check the credentials"
        )
    } else if has("AccessDenied") || e.kind() == opendal::ErrorKind::PermissionDenied {
        format!("access denied for key {key} on bucket {bucket} at {endpoint}")
    } else if has("UnknownIssuer")
        || has("invalid peer certificate")
        || has("certificate verify failed")
        || has("NotValidForName")
    {
        format!(
            "the TLS certificate of {endpoint} is not trusted ({}); set {table}.ca_bundle \
             to the CA that signed it",
            short(&chain)
        )
    } else if has("Connection refused") || has("tcp connect error") {
        format!("cannot connect to {endpoint}: connection refused")
    } else if has("timed out") || has("deadline") || has("timeout reached") {
        format!("the object store at {endpoint} did not answer in time ({table}.stall_timeout)")
    } else {
        format!(
            "object store {endpoint} (bucket {bucket}): {}",
            short(&chain)
        )
    }
}

pub(super) fn short(s: &str) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}
