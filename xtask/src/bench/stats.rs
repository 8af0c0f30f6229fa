//! The statistics of the rounds: median and spread, round-by-round ratios and differences.

/// Median and min–max of a few rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn fmt(&self, digits: usize, unit: &str) -> String {
        format!(
            "{:.d$}{unit} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

pub fn fmt_opt(s: Option<Spread>, digits: usize, unit: &str) -> String {
    s.map_or_else(|| "n/a".to_owned(), |s| s.fmt(digits, unit))
}

/// Paired ratios with/without, round by round.
pub fn ratios(with: &[f64], without: &[f64]) -> Vec<f64> {
    with.iter()
        .zip(without)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect()
}

pub fn diffs(with: &[f64], without: &[f64]) -> Vec<f64> {
    with.iter().zip(without).map(|(a, b)| a - b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Spread::of(&[]).is_none());
        assert_eq!(ratios(&[2.0, 3.0], &[1.0, 0.0]), vec![2.0]);
    }
}
