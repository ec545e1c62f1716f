//! Which apps each department uses, and how much: an app name and, for
//! browsers, a host. Nothing else about what is on screen is ever produced.

use rand::Rng;

/// An app: its name, and the host for browsers.
pub(crate) type App = (&'static str, Option<&'static str>);

/// The apps of one kind of work, with weights, and the app of its meetings.
pub(crate) struct AppMix {
    pub apps: &'static [(&'static str, Option<&'static str>, u32)],
    pub meeting: App,
}

impl AppMix {
    /// One app, by weight.
    pub fn draw(&self, rng: &mut impl Rng) -> App {
        let total: u32 = self.apps.iter().map(|a| a.2).sum();
        let mut pick = rng.random_range(0..total);
        for &(app, host, weight) in self.apps {
            if pick < weight {
                return (app, host);
            }
            pick -= weight;
        }
        unreachable!("the pick is below the total weight")
    }
}

/// The benchmarks' office worker: the seven apps the earlier generator
/// used, equally likely, so the benchmarks' app ratings still apply.
pub(crate) const GENERAL: AppMix = AppMix {
    apps: &[
        ("Excel", None, 1),
        ("Outlook", None, 1),
        ("Slack", None, 1),
        ("Visual Studio Code", None, 1),
        ("Firefox", Some("docs.example.com"), 1),
        ("Firefox", Some("crm.example.com"), 1),
        ("Chrome", Some("news.example.org"), 1),
    ],
    meeting: ("Slack", None),
};

const SALES: AppMix = AppMix {
    apps: &[
        ("Chrome", Some("crm.example.com"), 24),
        ("Outlook", None, 18),
        ("Excel", None, 10),
        ("Softphone", None, 10),
        ("Teams", None, 8),
        ("Chrome", Some("www.linkedin.com"), 8),
        ("PowerPoint", None, 6),
        ("Chrome", Some("news.example.org"), 3),
        ("Chrome", Some("www.youtube.com"), 2),
    ],
    meeting: ("Zoom", None),
};

const SUPPORT: AppMix = AppMix {
    apps: &[
        ("Chrome", Some("helpdesk.example.com"), 32),
        ("Slack", None, 14),
        ("Chrome", Some("kb.example.com"), 12),
        ("Softphone", None, 12),
        ("Outlook", None, 8),
        ("Teams", None, 5),
        ("Chrome", Some("status.example.com"), 4),
        ("Chrome", Some("news.example.org"), 2),
        ("Chrome", Some("www.youtube.com"), 2),
    ],
    meeting: ("Teams", None),
};

const ENGINEERING: AppMix = AppMix {
    apps: &[
        ("Visual Studio Code", None, 28),
        ("Terminal", None, 14),
        ("Firefox", Some("github.com"), 12),
        ("Slack", None, 10),
        ("Firefox", Some("docs.example.com"), 6),
        ("Firefox", Some("docs.rs"), 5),
        ("Firefox", Some("stackoverflow.com"), 5),
        ("Outlook", None, 3),
        ("Firefox", Some("news.ycombinator.com"), 2),
        ("Firefox", Some("www.youtube.com"), 2),
    ],
    meeting: ("Zoom", None),
};

const FINANCE: AppMix = AppMix {
    apps: &[
        ("Excel", None, 34),
        ("Chrome", Some("erp.example.com"), 20),
        ("Outlook", None, 14),
        ("Adobe Acrobat", None, 8),
        ("Teams", None, 6),
        ("Chrome", Some("bank.example.com"), 6),
        ("Word", None, 4),
        ("Chrome", Some("news.example.org"), 2),
    ],
    meeting: ("Teams", None),
};

const OPERATIONS: AppMix = AppMix {
    apps: &[
        ("Chrome", Some("erp.example.com"), 18),
        ("Chrome", Some("wms.example.com"), 16),
        ("Excel", None, 14),
        ("Outlook", None, 14),
        ("Teams", None, 10),
        ("Slack", None, 6),
        ("Chrome", Some("news.example.org"), 2),
    ],
    meeting: ("Teams", None),
};

const MARKETING: AppMix = AppMix {
    apps: &[
        ("Chrome", Some("analytics.example.com"), 16),
        ("Figma", None, 14),
        ("Chrome", Some("cms.example.com"), 12),
        ("Outlook", None, 10),
        ("PowerPoint", None, 10),
        ("Chrome", Some("www.linkedin.com"), 10),
        ("Slack", None, 10),
        ("Chrome", Some("www.youtube.com"), 4),
    ],
    meeting: ("Zoom", None),
};

const HR: AppMix = AppMix {
    apps: &[
        ("Chrome", Some("hris.example.com"), 24),
        ("Outlook", None, 20),
        ("Word", None, 14),
        ("Excel", None, 12),
        ("Teams", None, 12),
        ("Chrome", Some("www.linkedin.com"), 6),
    ],
    meeting: ("Teams", None),
};

const LEGAL: AppMix = AppMix {
    apps: &[
        ("Word", None, 30),
        ("Outlook", None, 20),
        ("Adobe Acrobat", None, 18),
        ("Chrome", Some("contracts.example.com"), 14),
        ("Teams", None, 8),
    ],
    meeting: ("Teams", None),
};

const OFFICE: AppMix = AppMix {
    apps: &[
        ("Outlook", None, 20),
        ("Chrome", Some("intranet.example.com"), 15),
        ("Excel", None, 15),
        ("Teams", None, 12),
        ("Word", None, 10),
        ("Slack", None, 10),
        ("Chrome", Some("news.example.org"), 3),
    ],
    meeting: ("Teams", None),
};

/// Field staff at the depot: planning the route, writing reports.
pub(crate) const FIELD_LAPTOP: AppMix = AppMix {
    apps: &[
        ("Chrome", Some("fieldservice.example.com"), 40),
        ("Outlook", None, 25),
        ("Excel", None, 15),
        ("Teams", None, 10),
    ],
    meeting: ("Teams", None),
};

/// Field staff's phone at a customer's site.
pub(crate) const FIELD_PHONE: AppMix = AppMix {
    apps: &[
        ("Field Service", None, 60),
        ("Phone", None, 15),
        ("Teams", None, 10),
        ("Chrome", Some("portal.example.com"), 8),
    ],
    meeting: ("Phone", None),
};

/// Field staff's phone while driving.
pub(crate) const NAVIGATION: App = ("Maps", None);

/// The app mix of an office department, by name (a general office mix for
/// names it does not know).
pub(crate) fn of_department(name: &str) -> &'static AppMix {
    match name {
        "Sales" => &SALES,
        "Support" => &SUPPORT,
        "Engineering" => &ENGINEERING,
        "Finance" => &FINANCE,
        "Operations" => &OPERATIONS,
        "Marketing" => &MARKETING,
        "HR" => &HR,
        "Legal" => &LEGAL,
        _ => &OFFICE,
    }
}
