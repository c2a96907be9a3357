//! The deadline of one request: the caller's `grpc-timeout` when it sent one,
//! never beyond `grpc.request_timeout`, less a margin so that the answer (a
//! result or a typed error) reaches the caller before it gives up. Every wait
//! inside locsvc (AoR lock, member reads, the first write confirmation) is
//! bounded by it.

use std::time::Duration;

use tokio::time::Instant;

/// Time kept for the answer's trip back: a tenth of the caller's budget,
/// between 2 and 50 ms.
pub fn margin(budget: Duration) -> Duration {
    (budget / 10).clamp(Duration::from_millis(2), Duration::from_millis(50))
}

/// Parses a `grpc-timeout` header value: at most 8 digits and a unit (H, M,
/// S, m, u, n), per the gRPC HTTP/2 protocol.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// When a request received at `now` must be answered: `server_max` after
/// it, or earlier when the caller's `grpc-timeout` (`header`) says so.
pub fn answer_by(now: Instant, header: Option<&str>, server_max: Duration) -> Instant {
    let budget = match header.and_then(parse_grpc_timeout) {
        Some(t) => t.saturating_sub(margin(t)).min(server_max),
        None => server_max,
    };
    now + budget
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_parse_and_junk_does_not() {
        assert_eq!(parse_grpc_timeout("400m"), Some(Duration::from_millis(400)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("299999u"),
            Some(Duration::from_micros(299_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "10", "123456789m", "-5m", "5x", "5 m", "٣m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_answer_leaves_a_margin_inside_the_callers_deadline() {
        let now = Instant::now();
        let max = Duration::from_secs(2);
        // The shim's 400 ms budget: answered by 360 ms.
        assert_eq!(
            answer_by(now, Some("400m"), max) - now,
            Duration::from_millis(360)
        );
        // 300 ms: by 270 ms.
        assert_eq!(
            answer_by(now, Some("300m"), max) - now,
            Duration::from_millis(270)
        );
        // A long client deadline is capped by the server's own, without margin.
        assert_eq!(answer_by(now, Some("10S"), max) - now, max);
        assert_eq!(answer_by(now, None, max) - now, max);
        // A garbled header is ignored, not trusted.
        assert_eq!(answer_by(now, Some("soon"), max) - now, max);
        // Tiny budgets answer at once rather than late.
        assert_eq!(answer_by(now, Some("1m"), max) - now, Duration::ZERO);
    }
}
