{
 "key": "228cf2f92d6bc34c",
 "signature": "22eZaRy/2jNLErPRil7Y35uTgUlV2yj7M4hx/mZ+gKedqNqyqT2mpazvIQIwr8agAYAkaN89525ErMT65lmFAA=="
}
