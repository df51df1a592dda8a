//! The crate two services share: the service trait and the types it uses.
//! The server implements the trait; the client calls it through the
//! generated `CalculatorClient`.

use serde::{Deserialize, Serialize};

/// Why a division failed: a typed error that reaches the caller as itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MathError {
    /// The divisor was zero.
    DivideByZero,
}

impl std::fmt::Display for MathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MathError::DivideByZero => f.write_str("division by zero"),
        }
    }
}

/// A calculator service.
#[mqrpc::service]
pub trait Calculator {
    /// Adds two integers.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Divides `a` by `b`.
    async fn divide(&self, a: f64, b: f64) -> Result<f64, MathError>;
    /// Sums a list.
    async fn sum(&self, values: Vec<i64>) -> i64;
}

/// The implementation the examples serve.
pub struct Calc;

impl Calculator for Calc {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn divide(&self, a: f64, b: f64) -> Result<f64, MathError> {
        if b == 0.0 {
            Err(MathError::DivideByZero)
        } else {
            Ok(a / b)
        }
    }

    async fn sum(&self, values: Vec<i64>) -> i64 {
        values.iter().sum()
    }
}
