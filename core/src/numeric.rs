//! Which JSON numbers PostgreSQL can store. `jsonb` keeps every number as a `numeric`,
//! whose value has at most 131,072 digits before the decimal point and 16,383 after it;
//! PostgreSQL 15 refuses anything else with SQLSTATE 22003, "value overflows numeric
//! format". [`check`] follows its parser (`numeric_in` in `utils/adt/numeric.c`):
//!
//! - an exponent of `INT_MAX / 2` (1,073,741,823) or more in magnitude is refused
//!   outright, even on a zero;
//! - the display scale (digits after the point, minus the exponent, at least 0) must fit
//!   in 14 bits: at most 16,383, again even for a zero;
//! - the weight of the first non-zero digit, counted in base-10,000 digits, must fit in
//!   an `int16`: a non-zero value below 10^131,072.
//!
//! A test on real PostgreSQL holds the two to the same answers.

/// Largest display scale of a `numeric` (`NUMERIC_DSCALE_MAX`).
const MAX_SCALE: i64 = 0x3FFF;
/// Largest weight of a `numeric`, in base-10,000 digits (`NUMERIC_WEIGHT_MAX`).
const MAX_WEIGHT: i64 = i16::MAX as i64;
/// Smallest weight (`NUMERIC_WEIGHT_MIN`).
const MIN_WEIGHT: i64 = i16::MIN as i64;
/// Exponents this large in magnitude are refused before anything else (`INT_MAX / 2`).
const MAX_EXPONENT: i64 = i32::MAX as i64 / 2;
/// Decimal digits per base-10,000 digit (`DEC_DIGITS`).
const DEC_DIGITS: i64 = 4;

/// Checks that `number`, the text of a valid JSON number, is a value PostgreSQL's
/// `numeric` can hold; the error says why not.
pub fn check(number: &str) -> Result<(), &'static str> {
    let unsigned = number.strip_prefix('-').unwrap_or(number);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], exponent(&unsigned[at + 1..])),
        None => (unsigned, 0),
    };
    if exponent.abs() >= MAX_EXPONENT {
        return Err("its exponent is too large");
    }
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let integer_digits = integer.len() as i64;
    let fraction_digits = fraction.len() as i64;
    if fraction_digits - exponent > MAX_SCALE {
        return Err("more than 16383 digits after the decimal point");
    }
    // The decimal weight of the first digit (10^weight), then of the first non-zero one.
    let first_weight = integer_digits - 1 + exponent;
    let Some(leading_zeros) = integer
        .bytes()
        .chain(fraction.bytes())
        .position(|digit| digit != b'0')
    else {
        return Ok(());
    };
    let weight = (first_weight - leading_zeros as i64).div_euclid(DEC_DIGITS);
    if weight > MAX_WEIGHT {
        return Err("more than 131072 digits before the decimal point");
    }
    if weight < MIN_WEIGHT {
        return Err("too small a magnitude");
    }
    Ok(())
}

/// The canonical text of `number`, the text of a valid JSON number: equal for numbers
/// `numeric` holds equal (`1`, `1.0`, `10e-1` and `0.1e1` are all `1e1`, every zero is
/// `0`), different otherwise. The value is `0.<digits> × 10^<exponent>`, with no leading
/// or trailing zero in the digits, written `[-]<digits>e<exponent>`.
pub fn canonical(number: &str) -> String {
    let (negative, unsigned) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], exponent(&unsigned[at + 1..])),
        None => (unsigned, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: Vec<u8> = integer.bytes().chain(fraction.bytes()).collect();
    let Some(first) = digits.iter().position(|&digit| digit != b'0') else {
        return "0".to_owned();
    };
    let last = digits
        .iter()
        .rposition(|&digit| digit != b'0')
        .unwrap_or(first);
    // 0.<digits[first..]> × 10^(integer digits − first + exponent)
    let weight = (integer.len() as i64 - first as i64).saturating_add(exponent);
    let significant = String::from_utf8_lossy(&digits[first..=last]);
    format!("{}{significant}e{weight}", if negative { "-" } else { "" })
}

/// The value of an exponent's text (`+12`, `-3`, `7`), saturating as C's `strtol` does.
fn exponent(text: &str) -> i64 {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = digits.bytes().fold(0i64, |value, digit| {
        value
            .saturating_mul(10)
            .saturating_add(i64::from(digit - b'0'))
    });
    if negative { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_equal_as_numeric_have_one_canonical_text() {
        for (numbers, expected) in [
            (
                &["1", "1.0", "10e-1", "0.1e1", "1.000E+0", "001"][..],
                "1e1",
            ),
            (&["0", "-0", "0.000", "0e99"][..], "0"),
            (&["123.45", "12345e-2", "0.0012345e5"][..], "12345e3"),
            (&["-0.05", "-5e-2", "-50E-3"][..], "-5e-1"),
            (&["1e400", "10e399"][..], "1e401"),
        ] {
            for number in numbers {
                assert_eq!(canonical(number), expected, "{number}");
            }
        }
        assert_ne!(canonical("0.1"), canonical("0.1000000000000000000001"));
        assert_ne!(canonical("1"), canonical("-1"));
    }

    #[test]
    fn storable_numbers_pass() {
        for number in [
            "0",
            "-0",
            "1",
            "-12.5",
            "1e400",
            "1E+400",
            "1e131071",
            "1.5e131071",
            "0.1e131072",
            "0.01e131073",
            "1e-16383",
            "0e131072",
            "0e200000",
            "0.00e-16381",
        ] {
            assert_eq!(check(number), Ok(()), "{number}");
        }
        assert_eq!(check(&"9".repeat(131_072)), Ok(()));
        assert_eq!(check(&format!("0.{}1", "0".repeat(16_382))), Ok(()));
        assert_eq!(check(&format!("1.{}", "0".repeat(16_383))), Ok(()));
    }

    #[test]
    fn numbers_numeric_cannot_hold_are_refused() {
        for number in [
            "1e131072",
            "-1e131072",
            "12e131071",
            "1e131073",
            "1e-16384",
            "5e-16384",
            "0e-16384",
            "0.0e-16383",
            "1e1000000000",
            "0e1073741823",
            "0e-1073741823",
            "0e100000000000000000000",
            "1e-100000000000000000000",
        ] {
            assert!(check(number).is_err(), "{number}");
        }
        assert!(check(&"9".repeat(131_073)).is_err());
        assert!(check(&format!("1{}", "0".repeat(200_000))).is_err());
        assert!(check(&format!("0.{}1", "0".repeat(16_383))).is_err());
        assert!(check(&format!("1.{}", "0".repeat(16_384))).is_err());
    }
}
