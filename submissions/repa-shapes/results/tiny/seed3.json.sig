{
 "key": "8c406635d5fd3ff6",
 "signature": "LVR6ed8amiupj8zMAeb3PFRSUvh2eiQF38KZ+040NH/siL0E03pM0eROHSUaBw+IQ91e0EAd+64/H/ojtY0TCg=="
}
