//! The directory: which department each employee belongs to, and which
//! departments each manager manages. HR loads it whole (it replaces the
//! previous version). The processor reads the department at processing time;
//! the query service scopes managers with it and re-identifies pseudonyms for
//! roles allowed to see identities.

use std::collections::{BTreeMap, BTreeSet};

use candor_schemas::EmployeeId;
use serde::{Deserialize, Serialize};

/// Longest department name, in bytes.
pub const MAX_DEPARTMENT_LEN: usize = 64;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub employees: BTreeMap<EmployeeId, Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub department: String,
    /// Departments this employee manages (as a manager-role token).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub manages: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "directory: employee {employee}: department {department:?} must be 1-{MAX_DEPARTMENT_LEN} bytes of printable text"
)]
pub struct DirectoryError {
    pub employee: EmployeeId,
    pub department: String,
}

fn department_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DEPARTMENT_LEN
        && name.trim() == name
        && !name.chars().any(char::is_control)
}

impl Directory {
    pub fn validate(&self) -> Result<(), DirectoryError> {
        for (employee, member) in &self.employees {
            for department in std::iter::once(&member.department).chain(&member.manages) {
                if !department_ok(department) {
                    return Err(DirectoryError {
                        employee: employee.clone(),
                        department: department.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    pub fn department_of(&self, employee: &EmployeeId) -> Option<&str> {
        self.employees.get(employee).map(|m| m.department.as_str())
    }

    /// The departments a manager manages (empty for anyone else).
    pub fn managed_by(&self, manager: &EmployeeId) -> BTreeSet<String> {
        self.employees
            .get(manager)
            .map(|m| m.manages.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn departments_must_be_printable_and_bounded() {
        let mut d: Directory = serde_json::from_str(
            r#"{"employees":{"e1":{"department":"Sales","manages":["Sales","Field"]},"e2":{"department":"Field"}}}"#,
        )
        .unwrap();
        d.validate().unwrap();
        let e1 = EmployeeId::new("e1").unwrap();
        assert_eq!(d.department_of(&e1), Some("Sales"));
        assert_eq!(d.managed_by(&e1).len(), 2);
        assert!(d.managed_by(&EmployeeId::new("e2").unwrap()).is_empty());
        d.employees.get_mut(&e1).unwrap().department = "x".repeat(65);
        assert!(d.validate().is_err());
        d.employees.get_mut(&e1).unwrap().department = "a\nb".into();
        assert!(d.validate().is_err());
        assert!(
            serde_json::from_str::<Directory>(r#"{"employees":{"bad id!":{"department":"x"}}}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Directory>(r#"{"employees":{},"extra":1}"#).is_err());
    }
}
