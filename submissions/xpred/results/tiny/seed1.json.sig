{
 "key": "8c406635d5fd3ff6",
 "signature": "dP7zzenO7Pjw8fyv6P+0HeHQqwGz9e+Mp0sTU6nFsw9xIQKtuNdDu13LSVvAqeVNacSECGHnl3TPyVFo62bBDA=="
}
