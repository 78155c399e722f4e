//! One scrape of etcd's metrics: a plain HTTP/1.0 GET of a loopback `http://` URL (what
//! kubeadm's `--listen-metrics-urls` serves), read to its end with a bound on size and time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// More than etcd's whole metrics page (about 100 KiB) by far.
const MAX_BYTES: u64 = 8 << 20;

/// `host:port` and path of an `http://` URL; an error sentence for anything else.
pub fn split(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!(
            "etcd metrics URL {url:?} is not an http:// URL (kubeadm's etcd serves its metrics \
             in plain HTTP on 127.0.0.1:2381)"
        )
    })?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    if hostport.is_empty() || !hostport.contains(':') {
        return Err(format!(
            "etcd metrics URL {url:?} names no host:port (kubeadm: http://127.0.0.1:2381/metrics)"
        ));
    }
    Ok((hostport.to_string(), path.to_string()))
}

/// The text of the page at `url`, within `timeout`.
pub async fn get(url: &str, timeout: Duration) -> Result<String, String> {
    let (hostport, path) = split(url)?;
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(hostport.as_str())
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let host = hostport.rsplit_once(':').map_or("", |(h, _)| h);
        let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/plain\r\n\r\n");
        conn.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        let mut body = Vec::new();
        (&mut conn)
            .take(MAX_BYTES)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        Ok::<_, String>(body)
    };
    let bytes = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))??;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "the answer is not HTTP".to_string())?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status:?}"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_port() {
        assert_eq!(
            split("http://127.0.0.1:2381").unwrap(),
            ("127.0.0.1:2381".into(), "/metrics".into())
        );
        assert_eq!(
            split("http://[::1]:2381/metrics").unwrap(),
            ("[::1]:2381".into(), "/metrics".into())
        );
        assert!(split("https://127.0.0.1:2381")
            .unwrap_err()
            .contains("plain HTTP"));
        assert!(split("http://localhost/x")
            .unwrap_err()
            .contains("host:port"));
    }
}
