//! Standard Webhooks headers: `webhook-id` (stable per message across retries, so receivers
//! can dedupe), `webhook-timestamp` (unix seconds of the attempt), and, when the webhook
//! has a signing secret, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.

pub(crate) use crate::value::signing::Signer;

/// The `webhook-id` of a request: the store id, the webhook and the sequence numbers it
/// carries. A single message keeps its id across retries and restarts; a batch's id names
/// its first and last message and their count.
pub(crate) fn message_id(store_id: u64, webhook: u32, seqs: &[u64]) -> String {
    match seqs {
        [one] => format!("msg_{store_id:x}_{webhook}_{one}"),
        _ => format!(
            "msg_{store_id:x}_{webhook}_{}-{}_{}",
            seqs.iter().min().copied().unwrap_or(0),
            seqs.iter().max().copied().unwrap_or(0),
            seqs.len()
        ),
    }
}

/// The Standard Webhooks headers of one attempt.
pub(crate) fn headers(
    signer: Option<&Signer>,
    id: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let ts = crate::timefmt::now_ms() / 1000;
    let mut h = vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts.to_string()),
    ];
    if let Some(s) = signer {
        h.push(("webhook-signature", s.sign(id, ts, body)));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::signing::parse_secret;

    #[test]
    fn signs_like_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let s = Signer::new(&key);
        let sig = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rejects_malformed_secrets_and_names_messages() {
        assert!(parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(parse_secret("whsec_!!!").is_err());
        assert!(parse_secret("whsec_AAAA").is_err());
        assert_eq!(message_id(0xab, 3, &[42]), "msg_ab_3_42");
        assert_eq!(message_id(0xab, 3, &[42, 40, 41]), "msg_ab_3_40-42_3");
    }
}
