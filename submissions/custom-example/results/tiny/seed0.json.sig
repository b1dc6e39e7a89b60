{
 "key": "0551c8948f5b38e6",
 "signature": "dyxa3722FhpQz8UlLX9VRn+IRUMUmpg/wAyENo/BcPrkhy5mTUGUElpWAM0ATRP7WILY2UFJ4SuXsnHeo3yTDw=="
}
