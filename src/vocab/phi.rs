//! One PHI type scheme for the teacher, the student and evaluation, and its mapping from each
//! gold set's own types.
//!
//! The teacher labels with [`PhiType`]; gold sets keep their own type names in `gold_phi`, and
//! evaluation maps them through [`from_meddocan`] / [`from_presidio`] (or [`from_gold`]).
//!
//! | `PhiType` | MEDDOCAN (22 types) | presidio |
//! |---|---|---|
//! | NAME | NOMBRE_SUJETO_ASISTENCIA, NOMBRE_PERSONAL_SANITARIO | PERSON |
//! | DATE | FECHAS | DATE_TIME |
//! | AGE | EDAD_SUJETO_ASISTENCIA | AGE |
//! | SEX | SEXO_SUJETO_ASISTENCIA | — |
//! | LOCATION | CALLE, TERRITORIO, PAIS | STREET_ADDRESS, GPE, LOCATION, ZIP_CODE |
//! | ID | ID_SUJETO_ASISTENCIA, ID_CONTACTO_ASISTENCIAL, ID_ASEGURAMIENTO, ID_TITULACION_PERSONAL_SANITARIO, ID_EMPLEO_PERSONAL_SANITARIO, NUMERO_BENEF_PLAN_SALUD, IDENTIF_VEHICULOS_NRSERIE_PLACAS, IDENTIF_DISPOSITIVOS_NRSERIE, IDENTIF_BIOMETRICOS, OTRO_NUMERO_IDENTIF | CREDIT_CARD, IBAN_CODE, US_SSN, US_DRIVER_LICENSE, US_PASSPORT, US_BANK_NUMBER, US_ITIN, MEDICAL_LICENSE, CRYPTO |
//! | CONTACT | NUMERO_TELEFONO, NUMERO_FAX, CORREO_ELECTRONICO, DIREC_PROT_INTERNET, URL_WEB | PHONE_NUMBER, EMAIL_ADDRESS, DOMAIN_NAME, URL, IP_ADDRESS |
//! | PROFESSION | PROFESION | TITLE |
//! | ORGANIZATION | HOSPITAL, INSTITUCION, CENTRO_SALUD | ORGANIZATION |
//! | OTHER | FAMILIARES_SUJETO_ASISTENCIA, OTROS_SUJETO_ASISTENCIA | NRP |
//!
//! MEDDOCAN's visible data uses 22 of the types above; the rest come from its guidelines and
//! cost nothing to map. Relatives ("madre", "padres") are OTHER, not NAME: they are mentions,
//! not names. IP addresses and URLs are CONTACT (a way to reach someone), as in MEDDOCAN's own
//! grouping of `DIREC_PROT_INTERNET` with `URL_WEB`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The PHI types the teacher and student use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PhiType {
    Name,
    Date,
    Age,
    Sex,
    Location,
    Id,
    Contact,
    Profession,
    Organization,
    Other,
}

impl PhiType {
    pub const ALL: [PhiType; 10] = [
        PhiType::Name,
        PhiType::Date,
        PhiType::Age,
        PhiType::Sex,
        PhiType::Location,
        PhiType::Id,
        PhiType::Contact,
        PhiType::Profession,
        PhiType::Organization,
        PhiType::Other,
    ];

    /// The names of [`PhiType::ALL`], in its order: the entity types of
    /// [`Task::Phi`](super::Task::Phi), whose tag ids (and so checkpoints) depend on the order.
    pub const NAMES: [&'static str; PhiType::ALL.len()] = names_of!(PhiType);

    /// The upper-case name used in prompts, tables and `[TYPE]` redactions.
    pub const fn as_str(self) -> &'static str {
        match self {
            PhiType::Name => "NAME",
            PhiType::Date => "DATE",
            PhiType::Age => "AGE",
            PhiType::Sex => "SEX",
            PhiType::Location => "LOCATION",
            PhiType::Id => "ID",
            PhiType::Contact => "CONTACT",
            PhiType::Profession => "PROFESSION",
            PhiType::Organization => "ORGANIZATION",
            PhiType::Other => "OTHER",
        }
    }

    /// Parse the upper-case name.
    pub fn parse(name: &str) -> Option<PhiType> {
        PhiType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for PhiType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Map a MEDDOCAN type (see the module table); `None` for a name not in MEDDOCAN.
pub fn from_meddocan(label: &str) -> Option<PhiType> {
    use PhiType::*;
    Some(match label {
        "NOMBRE_SUJETO_ASISTENCIA" | "NOMBRE_PERSONAL_SANITARIO" => Name,
        "FECHAS" => Date,
        "EDAD_SUJETO_ASISTENCIA" => Age,
        "SEXO_SUJETO_ASISTENCIA" => Sex,
        "CALLE" | "TERRITORIO" | "PAIS" => Location,
        "ID_SUJETO_ASISTENCIA"
        | "ID_CONTACTO_ASISTENCIAL"
        | "ID_ASEGURAMIENTO"
        | "ID_TITULACION_PERSONAL_SANITARIO"
        | "ID_EMPLEO_PERSONAL_SANITARIO"
        | "NUMERO_BENEF_PLAN_SALUD"
        | "IDENTIF_VEHICULOS_NRSERIE_PLACAS"
        | "IDENTIF_DISPOSITIVOS_NRSERIE"
        | "IDENTIF_BIOMETRICOS"
        | "OTRO_NUMERO_IDENTIF" => Id,
        "NUMERO_TELEFONO" | "NUMERO_FAX" | "CORREO_ELECTRONICO" | "DIREC_PROT_INTERNET" | "URL_WEB" => Contact,
        "PROFESION" => Profession,
        "HOSPITAL" | "INSTITUCION" | "CENTRO_SALUD" => Organization,
        "FAMILIARES_SUJETO_ASISTENCIA" | "OTROS_SUJETO_ASISTENCIA" => Other,
        _ => return None,
    })
}

/// Map a presidio entity type (see the module table); `None` for an unknown name.
pub fn from_presidio(label: &str) -> Option<PhiType> {
    use PhiType::*;
    Some(match label {
        "PERSON" => Name,
        "DATE_TIME" => Date,
        "AGE" => Age,
        "STREET_ADDRESS" | "GPE" | "LOCATION" | "ZIP_CODE" => Location,
        "CREDIT_CARD" | "IBAN_CODE" | "US_SSN" | "US_DRIVER_LICENSE" | "US_PASSPORT" | "US_BANK_NUMBER" | "US_ITIN"
        | "MEDICAL_LICENSE" | "CRYPTO" => Id,
        "PHONE_NUMBER" | "EMAIL_ADDRESS" | "DOMAIN_NAME" | "URL" | "IP_ADDRESS" => Contact,
        "TITLE" => Profession,
        "ORGANIZATION" => Organization,
        "NRP" => Other,
        _ => return None,
    })
}

/// Map a `gold_phi.phi_type` by its `dataset` (`meddocan*` or `presidio*`); our own type names
/// pass through, so already-mapped gold also works.
pub fn from_gold(dataset: &str, label: &str) -> Option<PhiType> {
    let dataset = dataset.to_ascii_lowercase();
    let mapped = if dataset.starts_with("meddocan") {
        from_meddocan(label)
    } else if dataset.starts_with("presidio") {
        from_presidio(label)
    } else {
        None
    };
    mapped.or_else(|| PhiType::parse(label))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type present in the visible MEDDOCAN and presidio data (counted with awk/python
    /// over ../shared/data) maps to something.
    #[test]
    fn every_gold_type_in_the_data_maps() {
        let meddocan = [
            "TERRITORIO",
            "FECHAS",
            "EDAD_SUJETO_ASISTENCIA",
            "NOMBRE_SUJETO_ASISTENCIA",
            "NOMBRE_PERSONAL_SANITARIO",
            "SEXO_SUJETO_ASISTENCIA",
            "CALLE",
            "PAIS",
            "ID_SUJETO_ASISTENCIA",
            "CORREO_ELECTRONICO",
            "ID_TITULACION_PERSONAL_SANITARIO",
            "ID_ASEGURAMIENTO",
            "HOSPITAL",
            "FAMILIARES_SUJETO_ASISTENCIA",
            "INSTITUCION",
            "ID_CONTACTO_ASISTENCIAL",
            "NUMERO_TELEFONO",
            "PROFESION",
            "NUMERO_FAX",
            "OTROS_SUJETO_ASISTENCIA",
            "CENTRO_SALUD",
            "ID_EMPLEO_PERSONAL_SANITARIO",
        ];
        assert_eq!(meddocan.len(), 22);
        assert!(meddocan.iter().all(|t| from_meddocan(t).is_some()), "unmapped MEDDOCAN type");
        let presidio = [
            "PERSON",
            "STREET_ADDRESS",
            "GPE",
            "ORGANIZATION",
            "CREDIT_CARD",
            "DATE_TIME",
            "TITLE",
            "PHONE_NUMBER",
            "AGE",
            "NRP",
            "EMAIL_ADDRESS",
            "DOMAIN_NAME",
            "ZIP_CODE",
            "IBAN_CODE",
            "US_SSN",
            "IP_ADDRESS",
            "US_DRIVER_LICENSE",
        ];
        assert!(presidio.iter().all(|t| from_presidio(t).is_some()), "unmapped presidio type");
        assert_eq!(from_gold("meddocan_es", "PAIS"), Some(PhiType::Location));
        assert_eq!(from_gold("presidio_synth", "PERSON"), Some(PhiType::Name));
        assert_eq!(from_gold("other", "DATE"), Some(PhiType::Date));
        assert_eq!(from_gold("presidio", "NOPE"), None);
        for t in PhiType::ALL {
            assert_eq!(PhiType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
    }
}
