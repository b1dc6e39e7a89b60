{
 "key": "0551c8948f5b38e6",
 "signature": "bec8PufiNzqAud+Bb2VuOYVkupHcJaQveeVwsGus2+VaIpmSaKC2Ss4aK9hVqQ/dvXoBji+vz5gsK0quYhmoAQ=="
}
