//! Prices as Python's `decimal.Decimal` keeps them: Dify computes every price in `Decimal` and
//! sends it as `str(Decimal)`, so `"0.0000250"`, `"1E-7"` and `"0.0"` are what clients see.
//! Floats would print other digits, so prices are exact decimals here too.

use std::fmt;

/// `mantissa × 10^exponent`, with Python's trailing zeros kept (`2.50` stays `2.50`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    mantissa: i128,
    exponent: i32,
}

/// Dify quantizes every price to seven places (`Decimal("0.0000001")`).
const PRICE_EXPONENT: i32 = -7;

/// More significant digits than any price has; keeps products far inside `i128`.
const MAX_DIGITS: usize = 18;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a decimal number (for example 2.5 or 0.000001)")]
pub struct DecimalError(pub String);

impl Default for Decimal {
    /// `Decimal("0.0")`, Dify's zero price.
    fn default() -> Self {
        Self { mantissa: 0, exponent: -1 }
    }
}

impl Decimal {
    pub fn parse(text: &str) -> Result<Self, DecimalError> {
        let invalid = || DecimalError(text.to_owned());
        let trimmed = text.trim();
        let (number, exponent) = match trimmed.find(['e', 'E']) {
            Some(at) => (&trimmed[..at], trimmed[at + 1..].parse::<i32>().map_err(|_| invalid())?),
            None => (trimmed, 0),
        };
        let (negative, number) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number.strip_prefix('+').unwrap_or(number)),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits = format!("{whole}{fraction}");
        if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
        if digits.trim_start_matches('0').len() > MAX_DIGITS || !(-40..=40).contains(&exponent) {
            return Err(invalid());
        }
        let magnitude: i128 = digits.parse().map_err(|_| invalid())?;
        let fraction_digits = i32::try_from(fraction.len()).map_err(|_| invalid())?;
        Ok(Self { mantissa: if negative { -magnitude } else { magnitude }, exponent: exponent - fraction_digits })
    }

    pub fn from_int(value: i64) -> Self {
        Self { mantissa: i128::from(value), exponent: 0 }
    }

    pub fn is_negative(&self) -> bool {
        self.mantissa < 0
    }

    /// The amount counted in units of `10^exponent` (rounded half up), for integer counters.
    pub fn in_units_of(self, exponent: i32) -> i128 {
        self.quantize(exponent).mantissa
    }

    /// Exact sum at the finer of the two exponents, as `Decimal.__add__`.
    pub fn plus(self, other: Decimal) -> Decimal {
        let exponent = self.exponent.min(other.exponent);
        Decimal { mantissa: self.scaled_to(exponent).saturating_add(other.scaled_to(exponent)), exponent }
    }

    /// Exact product, as `Decimal.__mul__`.
    pub fn times(self, other: Decimal) -> Decimal {
        Decimal { mantissa: self.mantissa.saturating_mul(other.mantissa), exponent: self.exponent + other.exponent }
    }

    /// `tokens × unit price × price unit`, quantized to seven places rounding half up: Dify's
    /// `AIModel.get_price`.
    pub fn price(tokens: i64, unit_price: Decimal, price_unit: Decimal) -> Decimal {
        Decimal::from_int(tokens).times(unit_price).times(price_unit).quantize(PRICE_EXPONENT)
    }

    /// Rounds (half away from zero, Python's `ROUND_HALF_UP`) or pads to `exponent`.
    fn quantize(self, exponent: i32) -> Decimal {
        if self.exponent >= exponent {
            return Decimal { mantissa: self.scaled_to(exponent), exponent };
        }
        let divisor = pow10(self.exponent.abs_diff(exponent));
        let (quotient, remainder) = (self.mantissa / divisor, self.mantissa % divisor);
        let rounded = if remainder.abs().saturating_mul(2) >= divisor { quotient + self.mantissa.signum() } else { quotient };
        Decimal { mantissa: rounded, exponent }
    }

    /// The mantissa at a smaller or equal exponent.
    fn scaled_to(self, exponent: i32) -> i128 {
        self.mantissa.saturating_mul(pow10(self.exponent.abs_diff(exponent)))
    }
}

fn pow10(power: u32) -> i128 {
    10_i128.checked_pow(power).unwrap_or(i128::MAX)
}

impl fmt::Display for Decimal {
    /// Python's `str(Decimal)`: plain notation while the exponent is at most 0 and the number
    /// is no smaller than 1E-6, scientific otherwise (`1E-7`, `0E-7`, `1E+2`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let length = i64::try_from(digits.len()).unwrap_or(i64::MAX);
        let exponent = i64::from(self.exponent);
        let adjusted = exponent + length - 1;
        if exponent <= 0 && adjusted >= -6 {
            if exponent == 0 {
                return write!(f, "{sign}{digits}");
            }
            let point = length + exponent;
            if point > 0 {
                let (whole, fraction) = digits.split_at(usize::try_from(point).unwrap_or(0));
                return write!(f, "{sign}{whole}.{fraction}");
            }
            let zeros = "0".repeat(usize::try_from(-point).unwrap_or(0));
            return write!(f, "{sign}0.{zeros}{digits}");
        }
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exponent_sign = if adjusted < 0 { "-" } else { "+" };
        write!(f, "{sign}{first}{fraction}E{exponent_sign}{}", adjusted.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decimal(text: &str) -> Decimal {
        Decimal::parse(text).unwrap()
    }

    /// Each expected string is what CPython 3.11 prints for the same expression, e.g.
    /// `str((Decimal(1033) * Decimal("0.001") * Decimal("0.001")).quantize(Decimal("0.0000001"), rounding=ROUND_HALF_UP))`.
    #[test]
    fn prices_print_as_python_decimals_do() {
        let cases = [
            (1033, "0.001", "0.001", "0.0010330"),
            (135, "0.002", "0.001", "0.0002700"),
            (12, "2.5", "0.000001", "0.0000300"),
            (1, "0.15", "0.000001", "2E-7"),
            (1, "0.05", "0.000001", "1E-7"),
            (1, "0.04", "0.000001", "0E-7"),
            (3, "0.05", "0.000001", "2E-7"),
            (0, "2.5", "0.000001", "0E-7"),
            (2_000_000, "10", "0.000001", "20.0000000"),
            (7, "1.25", "0.001", "0.0087500"),
        ];
        for (tokens, unit_price, unit, expected) in cases {
            assert_eq!(
                Decimal::price(tokens, decimal(unit_price), decimal(unit)).to_string(),
                expected,
                "{tokens} × {unit_price} × {unit}"
            );
        }
    }

    #[test]
    fn parsing_and_printing_keep_pythons_digits() {
        for (text, printed) in [
            ("0.0", "0.0"),
            ("2.5", "2.5"),
            ("10", "10"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1E-7"),
            ("1e-6", "0.000001"),
            ("2.50", "2.50"),
            ("1E+2", "1E+2"),
            ("-0.5", "-0.5"),
        ] {
            assert_eq!(decimal(text).to_string(), printed, "{text}");
        }
        assert_eq!(Decimal::default().to_string(), "0.0");
        assert_eq!(decimal("0.0000300").plus(decimal("0.0002700")).to_string(), "0.0003000");
        assert_eq!(Decimal::default().plus(decimal("0.0000300")).to_string(), "0.0000300");
        for bad in ["", "abc", "1.2.3", "--1", "1e", "0x10", "1234567890123456789012"] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?}");
        }
    }
}
