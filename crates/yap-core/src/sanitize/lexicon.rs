//! Word lists of the sanitizer: emoticons, arrows, top-level domains, units, abbreviations.

/// Text emoticons, removed from speech. Those with a letter or digit need a word boundary on
/// both sides (`x:D` and `2:3` stay; `haha:D` counts, a colon after two letters being no label);
/// the others only on the right (`great:)` loses its smiley). A trailing mouth may repeat
/// (`:)))`, `xDDD`). See also [`LETTER_EMOTICONS`].
pub(super) const EMOTICONS: &[&str] = &[
    ":)",
    ":-)",
    ":(",
    ":-(",
    ";)",
    ";-)",
    ";(",
    ":/",
    ":-/",
    ":|",
    ":-|",
    ":')",
    ":'(",
    ":]",
    ":[",
    "=)",
    "=(",
    "=]",
    "^_^",
    "^^",
    "^.^",
    "-_-",
    "-.-",
    ">_<",
    ">.<",
    ";_;",
    ":D",
    ":-D",
    ";D",
    ":P",
    ":-P",
    ":p",
    ":-p",
    ";P",
    ";p",
    ":O",
    ":-O",
    ":o",
    ":-o",
    ":3",
    "<3",
    "</3",
    "=D",
    "=P",
    "¯_(ツ)_/¯",
];

/// Emoticons that start with a letter: a word starting like one is held until it differs.
pub(super) const LETTER_EMOTICONS: &[&str] = &[
    "xD", "XD", "xP", "T_T", "T.T", "o_O", "O_o", "o.O", "O.o", "O_O", "o_o", "x_x", "X_X", "u_u",
    "uwu", "UwU", "owo", "OwO",
];

/// Arrows and the word each is read as.
pub(super) const ARROWS: &[(&str, &str)] = &[
    ("<-->", "to and from"),
    ("<->", "to and from"),
    ("<=>", "to and from"),
    ("-->", "to"),
    ("==>", "to"),
    ("<--", "from"),
    ("<==", "from"),
    ("->", "to"),
    ("=>", "to"),
    ("—>", "to"),
    ("–>", "to"),
    ("<-", "from"),
];

/// The word a Unicode arrow is read as.
pub(super) fn arrow_char(c: char) -> Option<&'static str> {
    Some(match c {
        '→' | '⟶' | '➔' | '➜' | '➝' | '➞' | '➡' | '⇒' | '⟹' | '↦' => "to",
        '←' | '⟵' | '⬅' | '⇐' | '⟸' => "from",
        '↔' | '⟷' | '⇔' | '⟺' => "to and from",
        '↑' | '⬆' => "up",
        '↓' | '⬇' => "down",
        _ => return None,
    })
}

/// Top-level domains that make `label.tld` a web address without a scheme.
pub(super) const TLDS: &[&str] = &[
    "com", "org", "net", "edu", "gov", "io", "ai", "dev", "app", "co", "uk", "us", "ca", "de",
    "fr", "eu", "nl", "ch", "au", "jp", "es", "ru", "cn", "br", "me", "tv", "info", "biz", "xyz",
    "gg", "ly", "fm", "rs", "tech", "site", "online", "shop", "blog", "page",
];

/// Unit abbreviations after a number: (abbreviation, singular, plural).
pub(super) const UNITS: &[(&str, &str, &str)] = &[
    ("km/h", "kilometer per hour", "kilometers per hour"),
    ("m/s", "meter per second", "meters per second"),
    ("km", "kilometer", "kilometers"),
    ("kph", "kilometer per hour", "kilometers per hour"),
    ("kmh", "kilometer per hour", "kilometers per hour"),
    ("mph", "mile per hour", "miles per hour"),
    ("m", "meter", "meters"),
    ("cm", "centimeter", "centimeters"),
    ("mm", "millimeter", "millimeters"),
    ("mi", "mile", "miles"),
    ("ft", "foot", "feet"),
    ("kg", "kilogram", "kilograms"),
    ("g", "gram", "grams"),
    ("mg", "milligram", "milligrams"),
    ("lb", "pound", "pounds"),
    ("lbs", "pound", "pounds"),
    ("oz", "ounce", "ounces"),
    ("ml", "milliliter", "milliliters"),
    ("mL", "milliliter", "milliliters"),
    ("L", "liter", "liters"),
    ("GB", "gigabyte", "gigabytes"),
    ("MB", "megabyte", "megabytes"),
    ("KB", "kilobyte", "kilobytes"),
    ("kB", "kilobyte", "kilobytes"),
    ("TB", "terabyte", "terabytes"),
    ("GHz", "gigahertz", "gigahertz"),
    ("MHz", "megahertz", "megahertz"),
    ("kHz", "kilohertz", "kilohertz"),
    ("Hz", "hertz", "hertz"),
    ("kW", "kilowatt", "kilowatts"),
    ("kWh", "kilowatt hour", "kilowatt hours"),
    ("h", "hour", "hours"),
    ("hr", "hour", "hours"),
    ("hrs", "hour", "hours"),
    ("min", "minute", "minutes"),
    ("mins", "minute", "minutes"),
    ("sec", "second", "seconds"),
    ("secs", "second", "seconds"),
    ("ms", "millisecond", "milliseconds"),
    ("yr", "year", "years"),
    ("yrs", "year", "years"),
    ("fps", "frame per second", "frames per second"),
    ("bpm", "beat per minute", "beats per minute"),
    ("kcal", "kilocalorie", "kilocalories"),
];

/// Words after a slash that read "per …" after an amount (`$9.99/mo`).
const PER_WORDS: &[(&str, &str)] = &[
    ("month", "month"),
    ("mo", "month"),
    ("year", "year"),
    ("day", "day"),
    ("week", "week"),
    ("wk", "week"),
    ("hour", "hour"),
    ("night", "night"),
    ("person", "person"),
    ("piece", "piece"),
];

/// The word after "per" for `/word` after an amount: a unit or a time word.
pub(super) fn per_word(w: &str) -> Option<&'static str> {
    unit_words(w, true).or_else(|| PER_WORDS.iter().find(|(a, _)| *a == w).map(|e| e.1))
}

/// The words of a unit abbreviation, singular when the amount is exactly one.
pub(super) fn unit_words(abbr: &str, one: bool) -> Option<&'static str> {
    UNITS
        .iter()
        .find(|(a, _, _)| *a == abbr)
        .map(|&(_, s, p)| if one { s } else { p })
}

/// Whether `prefix` could still grow into a unit abbreviation.
pub(super) fn unit_prefix(prefix: &str) -> bool {
    UNITS.iter().any(|(a, _, _)| a.starts_with(prefix))
}

/// Scale words that may follow an amount of money (`$2.5 million`).
pub(super) const SCALES: &[&str] = &["thousand", "million", "billion", "trillion"];

/// Abbreviations read as words when verbalizing.
pub(super) const ABBREVIATIONS: &[(&str, &str)] =
    &[("e.g", "for example"), ("i.e", "that is"), ("vs", "versus")];

/// Subject pronouns after which `<3` reads "love" (`I <3 you`).
pub(super) const SUBJECTS: &[&str] = &["I", "i", "we", "We", "you", "You", "they", "They", "u"];

/// Currency symbols: (symbol, singular, plural, sub-unit singular, sub-unit plural).
pub(super) const CURRENCIES: &[(char, &str, &str, &str, &str)] = &[
    ('$', "dollar", "dollars", "cent", "cents"),
    ('€', "euro", "euros", "cent", "cents"),
    ('£', "pound", "pounds", "penny", "pence"),
    ('¥', "yen", "yen", "", ""),
];

/// The currency entry of a symbol.
pub(super) fn currency(
    c: char,
) -> Option<(char, &'static str, &'static str, &'static str, &'static str)> {
    CURRENCIES.iter().find(|e| e.0 == c).copied()
}
