//! Who may do what, decided from the socket peer's uid and groups.

use serde::{Deserialize, Serialize};

/// The client on the other end of the socket, from `SO_PEERCRED` and its supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub pid: i32,
    /// Primary and supplementary gids.
    pub gids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Admin,
    Operator,
}

/// The gids that the config's group names resolved to; `None` where a group does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccessGroups {
    pub admin: Option<u32>,
    pub operator: Option<u32>,
}

impl AccessGroups {
    /// Root and the admin group may do everything; the operator group works on its own
    /// weavers; anyone else is refused.
    pub fn role_of(&self, caller: &Caller) -> Option<Role> {
        if caller.uid == 0 || self.admin.is_some_and(|g| caller.gids.contains(&g)) {
            Some(Role::Admin)
        } else if self.operator.is_some_and(|g| caller.gids.contains(&g)) {
            Some(Role::Operator)
        } else {
            None
        }
    }
}

/// Whether `caller` acting as `role` may see or change a weaver created by `owner_uid`.
pub fn may_touch(role: Role, caller: &Caller, owner_uid: u32) -> bool {
    match role {
        Role::Admin => true,
        Role::Operator => caller.uid == owner_uid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gids: &[u32]) -> Caller {
        Caller { uid, pid: 1, gids: gids.to_vec() }
    }

    #[test]
    fn roles() {
        let groups = AccessGroups { admin: Some(100), operator: Some(200) };
        let check = |c: Caller, expected: Option<Role>| assert_eq!(groups.role_of(&c), expected, "{c:?}");
        check(caller(0, &[0]), Some(Role::Admin));
        check(caller(1000, &[1000, 100]), Some(Role::Admin));
        check(caller(1000, &[1000, 200]), Some(Role::Operator));
        check(caller(1000, &[1000]), None);
        let none = AccessGroups::default();
        assert_eq!(none.role_of(&caller(1000, &[100, 200])), None);
        assert_eq!(none.role_of(&caller(0, &[])), Some(Role::Admin));
    }

    #[test]
    fn operators_touch_only_their_own() {
        let op = caller(1000, &[200]);
        assert!(may_touch(Role::Operator, &op, 1000));
        assert!(!may_touch(Role::Operator, &op, 1001));
        assert!(may_touch(Role::Admin, &op, 1001));
    }
}
