{
 "key": "8c406635d5fd3ff6",
 "signature": "FANqU2GfY91yBUaBhpDT6X9vyIKIjh01MJ4/cfqs4pi7M6RAORm5AR1uUfz8DmWGmqma3uRYxACRStj8ewYODg=="
}
